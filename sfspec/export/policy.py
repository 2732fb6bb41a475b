"""The deployable policy: raw observations in, actions in the environment's units out.

``DeployPolicy`` wraps a trained actor-critic for export. Its inputs are one tensor per
observation key the model reads (``observed_inputs``: the actor's, and the critic's with the
value; raw, as the environment (the robot) gives them: the robot interface's scaling, the
preprocessing and the normaliser are inside), then its state tensors and a per-row ``reset``
flag. The states are the recurrent layers' (``h_in``, and ``c_in`` for an LSTM: zeroed by
``reset``), then the robot interface's: each stacked input's history (``KEY_history_in``: every
frame becomes the current one on ``reset``) and the previous action (``last_action_in``: zeroed
by ``reset``). Its outputs are the deterministic actions already mapped to the action space's
bounds (and through the interface to robot units), one tensor per action part, then the next
states (``h_out``, ..., ``KEY_history_out``, ``last_action_out``) and, if asked, the value.

A controller feeds every ``*_out`` back as the matching ``*_in`` on the next step, starts from
zeros, and sets ``reset`` on each episode's first step: the graph does the rest.

It reads the model through the model contract only (``observed_inputs``, ``state_slots``, ``policy_step``,
``action_mask``, ``action_head``, ``preprocessor``), so any ``ActorCritic`` exports the same way.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from sfspec.compiler.interface import RobotInterface
from sfspec.compiler.interface_config import LAST_ACTION
from sfspec.compiler.model import ActorCritic
from sfspec.compiler.spaces import ObsInput
from sfspec.export.errors import ExportError


@dataclass(frozen=True)
class DeployState:
    """One state tensor a deployed policy carries: its name (without ``_in``/``_out``), row shape, and reset rule."""

    name: str
    shape: tuple[int, ...]  # one row, batch excluded
    kind: str  # recurrent | history | last_action
    on_reset: str  # what ``reset`` does to it, in words for policy.json


_ON_RESET = {
    "recurrent": "zeros",
    "history": "every frame becomes the current observation (after scaling)",
    "last_action": "zeros",
}


class DeployPolicy(nn.Module):
    """forward(*observations, *states_in, reset) -> (*actions, *states_out[, value])."""

    def __init__(self, model: ActorCritic, with_value: bool = False):
        super().__init__()
        self.model = model.eval()
        self.with_value = with_value
        observed = _observed(model, with_value)  # the bundle takes nothing its graph does not read
        self.interface: RobotInterface | None = model.robot_interface
        interface = self.interface
        self.reads_last_action = interface is not None and interface.last_action and LAST_ACTION in observed
        self.obs_keys = [k for k in observed if not (self.reads_last_action and k == LAST_ACTION)]
        self.history_keys = [k for k in self.obs_keys if interface is not None and k in interface.histories]
        self.model_slots = model.state_slots(with_value)
        self.slots = [
            DeployState(s.name, (s.layers, s.hidden), "recurrent", _ON_RESET["recurrent"]) for s in self.model_slots
        ]
        self.slots += [
            DeployState(f"{k}_history", interface.history_shape(k), "history", _ON_RESET["history"])
            for k in self.history_keys
        ]
        if self.reads_last_action:
            self.slots.append(
                DeployState(LAST_ACTION, (interface.action_size,), "last_action", _ON_RESET["last_action"])
            )
        self.head = model.action_head
        self.parts = [(p.kind, p.size, tuple(p.space.shape)) for p in model.layout.parts]
        self.compute_dtype: torch.dtype | None = None  # set on the float64 reference copy only

    def float64_copy(self) -> DeployPolicy:
        """A float64 copy: the reference the parity gate measures float32 rounding against."""
        reference = copy.deepcopy(self).double()
        reference.compute_dtype = torch.float64
        return reference

    @property
    def input_names(self) -> list[str]:
        """Names of the inputs, in order."""
        names = list(self.obs_keys) + [f"{s.name}_in" for s in self.slots]
        return names + (["reset"] if self.slots else [])

    @property
    def output_names(self) -> list[str]:
        """Names of the outputs, in order."""
        layout = self.model.layout
        if layout.container == "plain":
            actions = ["action"]
        else:
            actions = [f"action_{k}" for k in layout.keys]
        return actions + [f"{s.name}_out" for s in self.slots] + (["value"] if self.with_value else [])

    @property
    def obs_inputs(self) -> dict[str, ObsInput]:
        """Each observation input as the bundle takes it (the robot's units and shape where the interface applies)."""
        robot = self.interface.raw_inputs if self.interface is not None else {}
        return {k: robot[k] if k in self._transformed else self.model.inputs[k] for k in self.obs_keys}

    @property
    def _transformed(self) -> list[str]:
        """The inputs the robot interface transforms."""
        return self.interface.keys if self.interface is not None else []

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.outputs_and_margins(*inputs, margins=False)[0]

    def outputs_and_margins(self, *inputs: torch.Tensor, margins: bool = True) -> tuple[tuple[torch.Tensor, ...], list]:
        """``forward``'s outputs and, per output, each discrete action's decision margin (None elsewhere).

        The margin is how far the chosen logit is above the runner-up (or a Bernoulli logit from 0):
        a margin within float32 rounding noise is a near-tie, where artifacts may legitimately differ.
        It is NaN where a logit the choice depends on is NaN or infinite (argmax of NaN is 0, a
        decision no golden data can tell from a right one): the gate refuses those.
        """
        params, mask, new_states, value, batch = self._decide(inputs)
        actions = self.head.to_env(self.head.distribution(params, mask).mode())  # the network's units
        if self.reads_last_action:
            new_states.append(actions)
        if self.interface is not None:
            actions = self.interface.to_robot(actions)
        outputs = self._split_actions(actions, batch) + new_states + ([value] if self.with_value else [])
        if not margins:
            return tuple(outputs), []
        found = self._margins(params, mask, batch)
        return tuple(outputs), found + [None] * (len(outputs) - len(found))

    def _decide(self, inputs: tuple) -> tuple:
        """(action parameters, action mask, next states, value, batch) for positional inputs."""
        n_obs, n_model = len(self.obs_keys), len(self.model_slots)
        raw = {k: inputs[i] for i, k in enumerate(self.obs_keys)}
        batch = inputs[0].shape[0]
        states_in = list(inputs[n_obs:-1]) if self.slots else []
        reset = inputs[-1] if self.slots else None
        obs, new_interface_states = self._network_inputs(raw, states_in[n_model:], reset)
        states = self._reset_states(states_in[:n_model], reset, batch)
        normalized = self.model.preprocessor(obs)
        if self.compute_dtype is not None:  # the preprocessor casts to float32; the reference continues in float64
            normalized = {k: v.to(self.compute_dtype) for k, v in normalized.items()}
        params, new_states, value = self.model.policy_step(normalized, states, self.with_value)
        return params, self.model.action_mask(raw), new_states + new_interface_states, value, batch

    def _network_inputs(self, raw: dict, interface_states: list, reset: torch.Tensor | None) -> tuple[dict, list]:
        """The model's inputs from the robot's, through the interface; and the interface's next states.

        ``interface_states`` are the histories (in ``history_keys`` order), then the last action.
        """
        if self.interface is None:
            return raw, []
        obs, new_states = {}, []
        histories = dict(zip(self.history_keys, interface_states))
        for key, value in raw.items():
            frame = self.interface.observe(key, value)
            if key in histories:
                stacked = self.interface.stack(key, histories[key], frame, reset)
                new_states.append(stacked)
                frame = stacked.flatten(1)
            obs[key] = frame
        if self.reads_last_action:
            keep = 1.0 - reset.to(torch.float32).reshape(-1, 1)
            obs[LAST_ACTION] = interface_states[-1] * keep
        return obs, new_states

    def _margins(self, params: torch.Tensor, mask: torch.Tensor | None, batch: int) -> list:
        """Per action part: the decision margin of every discrete value (batch, *shape), None for Gaussians."""
        out, p_start, m_start = [], 0, 0
        for part, size, (kind, _, shape) in zip(self.head.layout.parts, self.head.param_sizes, self.parts):
            p = params[:, p_start : p_start + size]
            p_start += size
            if kind == "gaussian":
                out.append(None)
                continue
            if kind == "bernoulli":
                out.append(torch.where(torch.isfinite(p), p.abs(), math.nan).reshape(batch, *shape))
                continue
            width = sum(part.categories)
            allowed = torch.ones_like(p, dtype=torch.bool)
            if mask is not None:  # masked choices are out of the running, not runners-up
                allowed = mask[:, m_start : m_start + width] >= 0.5
                p = p.masked_fill(~allowed, -math.inf)
            m_start += width
            broken = ~torch.isfinite(p) & allowed  # a NaN or infinite logit among the allowed choices
            sizes = list(part.categories)
            gaps = [_top2_gap(lg, bad) for lg, bad in zip(p.split(sizes, dim=1), broken.split(sizes, dim=1))]
            out.append(torch.stack(gaps, dim=1).reshape(batch, *shape))
        return out

    def _reset_states(self, state_inputs: list, reset: torch.Tensor | None, batch: int) -> list[torch.Tensor]:
        """The (batch, layers, hidden) recurrent state inputs with the rows flagged by ``reset`` zeroed."""
        if not state_inputs:
            return []
        keep = 1.0 - reset.to(torch.float32).reshape(batch, 1, 1)
        return [s * keep for s in state_inputs]

    def _split_actions(self, actions: torch.Tensor, batch: int) -> list[torch.Tensor]:
        """One tensor per action part, shaped and typed like the space's samples (batched)."""
        out, start = [], 0
        for kind, size, shape in self.parts:
            # static: one part takes the whole flat action (no shape test in traced graphs)
            part = actions if len(self.parts) == 1 else actions[:, start : start + size]
            start += size
            if kind == "gaussian":
                out.append(part if shape == (size,) else part.reshape(batch, *shape))
            else:  # discrete values travel as floats inside the model; exact integers here
                out.append(part.round().to(torch.int64).reshape(batch, *shape))
        return out


def _observed(model: ActorCritic, with_value: bool) -> list[str]:
    """``model.observed_inputs(with_value)``, checked: known input names, none twice, at least one."""
    keys = list(model.observed_inputs(with_value))
    unknown = [k for k in keys if k not in model.inputs]
    if unknown or not keys or len(set(keys)) != len(keys):
        raise ExportError(
            f"{type(model).__name__}.observed_inputs({with_value}) returned {keys}: expected distinct names "
            f"among the model's inputs {list(model.inputs)}"
        )
    return keys


def _top2_gap(logits: torch.Tensor, broken: torch.Tensor) -> torch.Tensor:
    """Best minus second-best logit per row; inf when only one choice is allowed, 0 when none is, NaN if ``broken``."""
    if logits.shape[1] < 2:
        gap = torch.full(logits.shape[:1], math.inf, dtype=logits.dtype)
    else:
        top = torch.topk(logits, 2, dim=1).values
        gap = torch.nan_to_num(top[:, 0] - top[:, 1], nan=0.0, posinf=math.inf)
    return torch.where(broken.any(dim=1), math.nan, gap)
