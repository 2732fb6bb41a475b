"""The actor-critic interface shared by the runtime and the export, and observation preprocessing.

Observations enter the model raw, as a dict of tensors keyed by input name (``obs`` for a plain
space): preprocessing (image layout and scale, one-hot codes) and the running normaliser are
inside, so a saved or exported model needs nothing beside it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from sfspec.compiler.components import ModelParams
from sfspec.compiler.config import ModelConfig
from sfspec.compiler.heads import ActionHead
from sfspec.compiler.interface import RobotInterface
from sfspec.compiler.spaces import ObsInput, action_layout, observation_inputs

if TYPE_CHECKING:
    from sfspec.compiler.plan import ModelPlan

ObsDict = dict[str, torch.Tensor]


class RunningMeanStd(nn.Module):
    """Running mean and variance of a stream of batches (parallel Welford update)."""

    def __init__(self, shape: tuple):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("var", torch.ones(shape))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Fold a batch (batch, *shape) into the statistics."""
        x = x.reshape(-1, *self.mean.shape).to(torch.float64)
        self.fold(torch.tensor(float(x.shape[0]), dtype=torch.float64), x.mean(0), x.var(0, unbiased=False))

    @torch.no_grad()
    def fold(self, count: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> None:
        """Fold the moments (count, mean, population variance) of other samples into the statistics."""
        mean, var = mean.reshape(self.mean.shape), var.reshape(self.mean.shape)
        total = self.count + count
        delta = mean - self.mean
        new_mean = self.mean + delta * (count / total)
        m2 = self.var * self.count + var * count + delta.pow(2) * self.count * count / total
        self.mean.copy_(new_mean)
        self.var.copy_(m2 / total)
        self.count.copy_(total)


class ObsPreprocessor(nn.Module):
    """Raw observations to network inputs: dtype, layout, scale, one-hot, normalisation."""

    def __init__(self, inputs: dict[str, ObsInput], normalize_keys: tuple, clip: float, epsilon: float):
        super().__init__()
        self.inputs = inputs
        self.keys = list(inputs)
        self.clip = clip
        self.epsilon = epsilon
        self.normalize_keys = list(normalize_keys)
        # ModuleDict keys may not contain '.', and input names may (nested Dict spaces)
        self.normalizers = nn.ModuleList(RunningMeanStd(inputs[k].shape) for k in self.normalize_keys)
        # Decided here, not from tensor shapes at call time: traced and exported graphs then hold
        # no shape-dependent Python branches (and no reshape where the layout already fits).
        self.reshape_keys = {k for k, info in inputs.items() if _arrives_as(info) != info.shape}
        self.offset_buffers: dict[str, str] = {}
        for i, (key, info) in enumerate((k, v) for k, v in inputs.items() if any(v.offset)):
            self.offset_buffers[key] = f"offset_{i}"  # a constant of the model, moved with it by .to(device)
            self.register_buffer(f"offset_{i}", torch.tensor(info.offset, dtype=torch.long), persistent=False)

    def normalizer(self, key: str) -> RunningMeanStd | None:
        """The running statistics of one input, if it is normalised."""
        if key not in self.normalize_keys:
            return None
        return self.normalizers[self.normalize_keys.index(key)]

    @torch.no_grad()
    def update(self, obs: ObsDict) -> None:
        """Update the normalisers from a batch of raw observations."""
        for key, rms in zip(self.normalize_keys, self.normalizers):
            rms.update(self._prepare(key, obs[key]))

    def _prepare(self, key: str, x: torch.Tensor) -> torch.Tensor:
        info = self.inputs[key]
        if info.kind in ("discrete", "multi_discrete"):
            return self._encode_discrete(key, info, x)
        if x.dtype != torch.float32:
            x = x.to(torch.float32)
        if info.kind == "image" and info.channels_last:
            x = x.permute(0, 3, 1, 2)
        if info.scale is not None:
            x = x * info.scale
        if key not in self.reshape_keys:
            return x
        return x.reshape(x.shape[0], *info.shape)

    def _encode_discrete(self, key: str, info: ObsInput, x: torch.Tensor) -> torch.Tensor:
        codes = x.reshape(x.shape[0], -1).long()
        if key in self.offset_buffers:
            codes = codes - getattr(self, self.offset_buffers[key])
        if info.encoding == "index":
            return codes.to(torch.float32)
        parts = [F.one_hot(codes[:, i].clamp(0, n - 1), n) for i, n in enumerate(info.categories)]
        return torch.cat(parts, dim=1).to(torch.float32)

    def forward(self, obs: ObsDict) -> ObsDict:
        """Network inputs for every key present in ``obs``."""
        out = {}
        for key in self.keys:
            if key not in obs:
                continue
            x = self._prepare(key, obs[key])
            rms = self.normalizer(key)
            if rms is not None:
                x = ((x - rms.mean) * torch.rsqrt(rms.var + self.epsilon)).clamp(-self.clip, self.clip)
            out[key] = x
        return out


def _arrives_as(info: ObsInput) -> tuple:
    """The shape of one row of ``info`` after dtype, layout and scale, before any reshape."""
    raw = tuple(info.raw_shape)
    if info.kind == "image" and info.channels_last:
        return (raw[2], raw[0], raw[1])
    return raw


# ----------------------------------------------------------------------------- input checks
# The public entry points run in the training loop: these compare Python shape tuples only (no
# tensor data is read, so no host synchronisation) and turn a deep torch error into one that names
# the input with the expected and actual shape.


def _shape_text(dims: tuple) -> str:
    """A shape as users read it: ``(B, 6)``, ``(B,)``."""
    return f"({dims[0]},)" if len(dims) == 1 else "(" + ", ".join(str(d) for d in dims) + ")"


def _lead_text(names: tuple[str, ...], lead: tuple[int, ...], source: str) -> str:
    return ", ".join(f"{n} = {v}" for n, v in zip(names, lead)) + f" as in {source}"


def check_observations(
    inputs: dict[str, ObsInput], obs: Any, lead: tuple[int, ...], names: tuple[str, ...], source: str
) -> None:
    """Raise ValueError unless every model input is in ``obs`` as a tensor shaped (*lead, *raw shape)."""
    takes = ", ".join(sorted(inputs))
    if not isinstance(obs, Mapping):
        got = type(obs).__name__
        raise ValueError(f"observations must be a dict of tensors keyed by input name ({takes}); got {got}")
    n = len(lead)
    for key, info in inputs.items():
        x = obs.get(key)
        if x is None:
            raise ValueError(f"observation '{key}' is missing; the model takes: {takes}")
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"observation '{key}': expected a torch.Tensor, got {type(x).__name__}")
        shape, raw = tuple(x.shape), tuple(info.raw_shape)
        row_ok = shape[n:] == raw or (not raw and shape[n:] == (1,))  # a scalar space may come as (B, 1)
        if row_ok and shape[:n] == lead:
            continue
        where = "" if not row_ok else f" with {_lead_text(names, lead, source)}"
        raise ValueError(f"observation '{key}': expected shape {_shape_text(names + raw)}{where}, got {shape}")


def check_state(state: Any, width: int, batch: int | None = None, source: str = "") -> int:
    """Raise ValueError unless ``state`` is a (B, width) tensor (B = ``batch`` when given); returns B."""
    expected = f"(B, {width}), as model.initial_state(B) makes it"
    if not isinstance(state, torch.Tensor):
        raise ValueError(f"state: expected a tensor of shape {expected}; got {type(state).__name__}")
    shape = tuple(state.shape)
    if len(shape) != 2 or shape[1] != width:
        raise ValueError(f"state: expected shape {expected}; got {shape}")
    if batch is not None and shape[0] != batch:
        raise ValueError(f"state: expected shape (B, {width}) with B = {batch} as in {source}; got {shape}")
    return shape[0]


def check_actions(actions: Any, lead: tuple[int, ...], names: tuple[str, ...], width: int, source: str) -> None:
    """Raise ValueError unless ``actions`` are flat actions shaped (*lead, width) ((*lead,) if width is 1)."""
    expected = _shape_text((*names, width))
    if not isinstance(actions, torch.Tensor):
        raise ValueError(f"actions: expected a tensor of shape {expected}; got {type(actions).__name__}")
    shape = tuple(actions.shape)
    if shape != (*lead, width) and not (width == 1 and shape == lead):
        where = _lead_text(names, lead, source)
        raise ValueError(f"actions: expected shape {expected} with {where}; got {shape}")


@dataclass
class ActResult:
    """What sampling an action returns to the runtime."""

    actions: torch.Tensor  # flat, as the distribution samples them (batch, A)
    log_probs: torch.Tensor  # (batch,)
    values: torch.Tensor  # (batch,)
    state: torch.Tensor  # next recurrent state (batch, S)


@dataclass(frozen=True)
class StateSlot:
    """One named recurrent state tensor: its place in the flat state, its shape, and its stack."""

    name: str  # without the _in / _out suffix an export adds: "h", "c", "h_1", "critic_h", ...
    start: int  # offset in the model's flat (B, S) state
    layers: int
    hidden: int
    stack: str  # actor | critic | shared, or model for a custom whole actor-critic

    @property
    def width(self) -> int:
        """Columns of the flat state it covers."""
        return self.layers * self.hidden


def named_slots(raw: list[tuple[str, str, int, int, int, str]]) -> list[StateSlot]:
    """(prefix, kind, start, layers, hidden, stack) per state tensor to slots named h, c, h_1, critic_h, ..."""
    counts: dict[tuple[str, str], int] = {}
    for prefix, kind, *_ in raw:
        counts[(prefix, kind)] = counts.get((prefix, kind), 0) + 1
    seen: dict[tuple[str, str], int] = {}
    slots = []
    for prefix, kind, start, layers, hidden, stack in raw:
        index = seen.get((prefix, kind), 0)
        seen[(prefix, kind)] = index + 1
        suffix = f"_{index}" if counts[(prefix, kind)] > 1 else ""
        slots.append(StateSlot(f"{prefix}{kind}{suffix}", start, layers, hidden, stack))
    return slots


@dataclass(frozen=True)
class ModuleRow:
    """One row of a model summary: where it is, what it is, its output shape, and the module holding its weights."""

    path: str
    layer: str
    out_shape: tuple
    module: nn.Module | None


class ActorCritic(nn.Module):
    """Base of every actor-critic: subclasses define ``forward``; the rest is shared.

    ``forward(normalized_obs_dict, rnn_states, values_only=False)`` returns a dict with
    ``action_params`` (omitted when values_only), ``values`` (batch,) and ``new_rnn_states``.
    ``state_size`` is the width of the recurrent state (0 for a feed-forward model).

    The public contract beside the runtime's entry points (``act``, ``evaluate``, ``values``,
    ``deterministic_actions``): ``observed_inputs``, ``state_slots``, ``policy_step``, ``action_mask``
    and ``summary_rows``. Export and summaries read a model through these only; the defaults here
    work for any Sample Factory-shaped ``forward`` and its flat state.
    """

    def __init__(self, obs_space, action_space, cfg, plan: ModelPlan | None = None):
        super().__init__()
        if plan is None and isinstance(cfg, ModelParams):  # a custom class, called in Sample Factory's shape
            plan = cfg.model_plan
        self.obs_space = obs_space
        self.action_space = action_space
        self.cfg = cfg
        if plan is not None:
            self.inputs, self.layout, self.mask_key = plan.inputs, plan.action, plan.mask_key
            config, normalize_keys = plan.config, plan.normalize_keys
        else:  # built by hand from the spaces: the schema's defaults
            self.inputs, self.layout, self.mask_key = observation_inputs(obs_space), action_layout(action_space), None
            config, normalize_keys = ModelConfig.from_spec({}), ()
        self._std, self._bounds = config.std, config.bounds
        norm = (normalize_keys, config.normalize_clip, config.normalize_epsilon)
        self.preprocessor = ObsPreprocessor(self.inputs, *norm)
        self.state_size = 0
        # The spec's robot interface (robot units, histories), for export and evaluation; None without one.
        self.robot_interface = RobotInterface(*plan.interface) if plan is not None and plan.interface else None

    def get_action_parameterization(self, size: int) -> ActionHead:
        """The action head for features of width ``size`` (Sample Factory's name for it)."""
        return ActionHead(size, self.layout, self._std, self._bounds)

    @property
    def action_head(self) -> ActionHead:
        """The module holding the action distribution's parameters."""
        return self.action_parameterization

    def initial_state(self, batch: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Zero recurrent state for ``batch`` rows."""
        return torch.zeros(batch, self.state_size, device=device)

    def action_mask(self, obs: ObsDict) -> torch.Tensor | None:
        """The discrete-action mask (batch, choices) from raw observations (1 allowed, 0 not), or None."""
        if self.mask_key is None:
            return None
        mask = obs[self.mask_key]
        return mask.reshape(mask.shape[0], -1).to(torch.float32)

    def observed_inputs(self, with_value: bool) -> list[str]:
        """The inputs one ``policy_step`` reads, in ``inputs`` order: the actor's (and the critic's ``with_value``).

        The action mask counts as the actor's. This default (a custom actor-critic) says every input.
        """
        return list(self.inputs)

    def state_slots(self, with_value: bool) -> list[StateSlot]:
        """The named state tensors one step carries (the critic's only ``with_value``); flat by default: one ``h``."""
        return named_slots([("", "h", 0, 1, self.state_size, "model")]) if self.state_size else []

    def policy_step(
        self, normalized_obs: ObsDict, states: list[torch.Tensor], with_value: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
        """One step on named states: (action parameters, next states, value or None).

        ``normalized_obs`` is the preprocessor's output for (at least) ``observed_inputs(with_value)``;
        ``states`` are (B, layers, hidden) tensors, one per ``state_slots(with_value)``. This default
        goes through ``forward`` and the flat state.
        """
        if states:
            flat = torch.cat([s.flatten(1) for s in states], dim=1)
        else:
            first = next(iter(normalized_obs.values()))
            flat = first.new_zeros(first.shape[0], 0)
        out = self(normalized_obs, flat)
        new_flat = out["new_rnn_states"]
        slots = self.state_slots(with_value)
        new_states = [new_flat[:, s.start : s.start + s.width].reshape(-1, s.layers, s.hidden) for s in slots]
        return out["action_params"], new_states, out["values"] if with_value else None

    def critic_parameters(self) -> list[nn.Parameter]:
        """The parameters only the value reads (a separate critic's); none by default (one shared network)."""
        return []

    def summary_rows(self) -> list[ModuleRow]:
        """Rows for a model summary; by default one per top-level child module."""
        return [ModuleRow(name, type(child).__name__, (), child) for name, child in self.named_children()]

    def _checked(self, obs: ObsDict, state: torch.Tensor) -> None:
        """Clear errors for wrong inputs to a one-step entry point (shape comparisons only)."""
        if torch.jit.is_tracing():  # traced shapes are tensors: comparing them would bake in constants
            return
        batch = check_state(state, self.state_size)
        check_observations(self.inputs, obs, (batch,), ("B",), "the state")

    def _checked_sequence(self, obs: ObsDict, state: torch.Tensor, starts: torch.Tensor, actions: torch.Tensor) -> None:
        """Clear errors for wrong (T, B) inputs to ``evaluate`` (shape comparisons only)."""
        if torch.jit.is_tracing():
            return
        if not isinstance(starts, torch.Tensor) or starts.dim() != 2:
            got = tuple(starts.shape) if isinstance(starts, torch.Tensor) else type(starts).__name__
            raise ValueError(f"starts: expected shape (T, B) (1.0 where an episode begins); got {got}")
        lead = tuple(starts.shape)
        check_state(state, self.state_size, lead[1], "starts")
        check_observations(self.inputs, obs, lead, ("T", "B"), "starts")
        check_actions(actions, lead, ("T", "B"), self.layout.size, "starts")

    def _run(self, obs: ObsDict, state: torch.Tensor, values_only: bool = False) -> dict:
        return self(self.preprocessor(obs), state, values_only=values_only)

    def act(self, obs: ObsDict, state: torch.Tensor, deterministic: bool = False) -> ActResult:
        """Sample (or pick the most likely) actions, with log-probs, values and the next state."""
        self._checked(obs, state)
        out = self._run(obs, state)
        dist = self.action_head.distribution(out["action_params"], self.action_mask(obs))
        actions = dist.mode() if deterministic else dist.sample()
        return ActResult(actions, dist.log_prob(actions), out["values"], out["new_rnn_states"])

    def deterministic_actions(self, obs: ObsDict, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Most likely actions in the environment's units, and the next state."""
        self._checked(obs, state)
        out = self._run(obs, state)
        dist = self.action_head.distribution(out["action_params"], self.action_mask(obs))
        return self.action_head.to_env(dist.mode()), out["new_rnn_states"]

    def values(self, obs: ObsDict, state: torch.Tensor) -> torch.Tensor:
        """State values (batch,)."""
        self._checked(obs, state)
        return self._run(obs, state, values_only=True)["values"]

    def to_env(self, actions: torch.Tensor) -> torch.Tensor:
        """Flat sampled actions in the environment's units (bounds and discrete offsets applied)."""
        if not torch.jit.is_tracing():
            batch = tuple(actions.shape[:1]) if isinstance(actions, torch.Tensor) else ()
            check_actions(actions, batch, ("B",), self.layout.size, "the actions")
        return self.action_head.to_env(actions)

    def evaluate(self, obs: ObsDict, state: torch.Tensor, starts: torch.Tensor, actions: torch.Tensor):
        """Log-probs, entropies and values (each (T, B)) of given actions over (T, B) sequences.

        ``state`` is the state before the first step; it is zeroed where ``starts`` marks a new
        episode (truncated backpropagation through time).
        """
        self._checked_sequence(obs, state, starts, actions)
        steps, batch = starts.shape
        flat = {k: v.reshape(steps * batch, *v.shape[2:]) for k, v in obs.items()}
        if self.state_size == 0:
            out = self._run(flat, state.new_zeros(steps * batch, 0))
            params, values = out["action_params"], out["values"]
        else:
            params, values = self._sequence_outputs(self.preprocessor(flat), state, starts)
        dist = self.action_head.distribution(params, self.action_mask(flat))
        flat_actions = actions.reshape(steps * batch, -1)
        shape = (steps, batch)
        return dist.log_prob(flat_actions).reshape(shape), dist.entropy().reshape(shape), values.reshape(shape)

    def _sequence_outputs(self, normalized: ObsDict, state: torch.Tensor, starts: torch.Tensor):
        """(action params, values) over (T, B) steps flattened, resetting state at ``starts``.

        This generic version steps the whole model; subclasses may batch what is feed-forward.
        """
        steps, batch = starts.shape
        seq = {k: v.reshape(steps, batch, *v.shape[1:]) for k, v in normalized.items()}
        params_list, values_list = [], []
        for t in range(steps):
            state = state * (1.0 - starts[t]).unsqueeze(-1)
            out = self({k: v[t] for k, v in seq.items()}, state)
            params_list.append(out["action_params"])
            values_list.append(out["values"])
            state = out["new_rnn_states"]
        return torch.cat(params_list), torch.cat(values_list)
