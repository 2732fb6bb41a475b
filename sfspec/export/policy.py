"""The deployable policy: raw observations in, actions in the environment's units out.

``DeployPolicy`` wraps a trained actor-critic for export. Its inputs are one tensor per
observation key the model reads (``observed_inputs``: the actor's, and the critic's with the
value; raw, as the environment gives them: the preprocessing and normaliser are inside), then,
for recurrent models, the state of each recurrent layer as named tensors (``h_in``, and ``c_in``
for an LSTM) and a per-row ``reset`` flag that zeroes memory. Its outputs are the deterministic
actions already mapped to the action space's bounds, one tensor per action part, then the next
state (``h_out``, ``c_out``) and, if asked, the value.

It reads the model through the model contract only (``observed_inputs``, ``state_slots``, ``policy_step``,
``action_mask``, ``action_head``, ``preprocessor``), so any ``ActorCritic`` exports the same way.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from sfspec.compiler.model import ActorCritic
from sfspec.export.errors import ExportError


class DeployPolicy(nn.Module):
    """forward(*observations, *states_in, reset) -> (*actions, *states_out[, value])."""

    def __init__(self, model: ActorCritic, with_value: bool = False):
        super().__init__()
        self.model = model.eval()
        self.with_value = with_value
        self.obs_keys = _observed(model, with_value)  # the bundle takes nothing its graph does not read
        self.slots = model.state_slots(with_value)
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

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        params, mask, new_states, value, batch = self._decide(inputs)
        env_actions = self.head.to_env(self.head.distribution(params, mask).mode())
        outputs = self._split_actions(env_actions, batch) + new_states
        if self.with_value:
            outputs.append(value)
        return tuple(outputs)

    def outputs_and_margins(self, *inputs: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], list]:
        """``forward``'s outputs and, per output, each discrete action's decision margin (None elsewhere).

        The margin is how far the chosen logit is above the runner-up (or a Bernoulli logit from 0):
        a margin within float32 rounding noise is a near-tie, where artifacts may legitimately differ.
        It is NaN where a logit the choice depends on is NaN or infinite (argmax of NaN is 0, a
        decision no golden data can tell from a right one): the gate refuses those.
        """
        params, mask, new_states, value, batch = self._decide(inputs)
        env_actions = self.head.to_env(self.head.distribution(params, mask).mode())
        outputs = self._split_actions(env_actions, batch) + new_states + ([value] if self.with_value else [])
        margins = self._margins(params, mask, batch)
        return tuple(outputs), margins + [None] * (len(outputs) - len(margins))

    def _decide(self, inputs: tuple) -> tuple:
        """(action parameters, action mask, next states, value, batch) for positional inputs."""
        n_obs = len(self.obs_keys)
        obs = {k: inputs[i] for i, k in enumerate(self.obs_keys)}
        batch = inputs[0].shape[0]
        states = self._reset_states(inputs[n_obs:], batch)
        normalized = self.model.preprocessor(obs)
        if self.compute_dtype is not None:  # the preprocessor casts to float32; the reference continues in float64
            normalized = {k: v.to(self.compute_dtype) for k, v in normalized.items()}
        params, new_states, value = self.model.policy_step(normalized, states, self.with_value)
        return params, self.model.action_mask(obs), new_states, value, batch

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

    def _reset_states(self, state_inputs: tuple, batch: int) -> list[torch.Tensor]:
        """The (batch, layers, hidden) state inputs with the rows flagged by ``reset`` zeroed."""
        if not self.slots:
            return []
        keep = 1.0 - state_inputs[-1].to(torch.float32).reshape(batch, 1, 1)
        return [s * keep for s in state_inputs[:-1]]

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
