"""The batched-tensor environment interface shared by every bundled simulator."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType

import gymnasium
import torch
from gymnasium.vector.utils import batch_space

from sfspec.envs import catalogue
from sfspec.errors import did_you_mean

Info = dict[str, torch.Tensor]
StepResult = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, Info]


class TensorEnv:
    """``num_envs`` copies of one environment, stepped together as torch tensors on one device.

    This is the Isaac-Gym style of simulation: the whole batch lives in a few device tensors and
    every call advances all environments at once, so a GPU can run millions of steps per second.

    Contract
    --------
    * ``reset(seed=None) -> (obs, {})`` samples a fresh initial state for every environment and
      zeroes the step counters. ``obs`` has shape ``(num_envs, *single_observation_space.shape)``.
      A ``seed`` re-seeds the environment's ``torch.Generator`` first.
    * ``step(actions) -> (obs, reward, terminated, truncated, info)``:

      - ``actions``: for a ``Discrete`` action space an integer tensor of shape ``(num_envs,)``;
        for a ``Box`` action space a float tensor of shape ``(num_envs, *shape)``. Box actions are
        clipped to the bounds exactly where the gymnasium environment clips them.
      - ``obs``: ``(num_envs, ...)`` in ``dtype``. Environments whose episode ended in this step
        are already reset (autoreset in the same step), so ``obs`` is their new initial observation.
      - ``reward``: ``(num_envs,)`` in ``dtype``; ``terminated`` / ``truncated``: ``(num_envs,)`` bool.
        ``truncated`` is set when the step counter reaches ``max_episode_steps`` (like gymnasium's
        ``TimeLimit``), independently of ``terminated``; both can be true in the same step.
      - ``info["final_obs"]``: ``(num_envs, ...)``, the observation reached by this step *before*
        any reset, needed to bootstrap values on truncation. It is a full tensor; its rows are only
        meaningful where ``terminated | truncated``.

    * ``get_state()`` / ``set_state(state, elapsed_steps=None)`` read and overwrite the physical
      state, shape ``(num_envs, state_dim)``, laid out exactly like gymnasium's ``env.unwrapped.state``.

    Physical parameters (domain randomisation)
    ------------------------------------------
    * ``parameters`` (class attribute): the names an env exposes and their nominal values. Each
      environment (row) has its own value of each: ``params[name]``, a ``(num_envs,)`` tensor on the
      env's device that ``_dynamics`` reads instead of a constant. It is float64 (float32 on MPS), so
      coefficients combine as gymnasium's Python floats do; cast them with ``_coef`` where they meet
      the state. At the nominal values the dynamics are exactly those of the constants.
    * ``set_parameters(values, rows=None)`` writes values into all rows or the chosen ones;
      ``get_parameters()`` copies them.
    * ``set_randomization({name: (low, high)})``: from then on, every row whose episode starts (at
      ``reset`` and at each autoreset) draws each named parameter uniformly in ``[low, high]`` from
      ``self.generator``, before its initial state is drawn. Rows that do not reset keep theirs.

    No host synchronisation happens inside ``step``: no ``.item()``, ``.cpu()`` or Python branches on
    tensor values, so a CUDA stream is never stalled. The flip side is that invalid actions (a
    discrete index out of range, NaNs) are not checked. Randomness comes only from ``self.generator``,
    a ``torch.Generator`` on the env's device; every step draws a candidate initial state for every
    environment and keeps it where an episode ended, so trajectories depend on the seed alone.

    Returned tensors are fresh each step; the env never writes into them later, so they can be
    stored in rollout buffers without copying. The state and step counters are updated in place,
    so ``step`` can be captured in a CUDA graph (register ``env.generator`` with the graph via
    ``CUDAGraph.register_generator_state``); replays then overwrite the captured outputs.

    As with gymnasium, call ``reset()`` before the first ``step``; until then every environment sits
    in an all-zero placeholder state.

    Subclasses set ``env_id``, ``gym_id``, ``state_dim``, ``default_max_episode_steps``,
    ``parameters`` and the two ``single_*_space`` attributes (before calling ``TensorEnv.__init__``),
    and implement ``_initial_state``, ``_dynamics`` and ``_observe``; batching, autoreset, the time
    limit, seeding and the parameters' storage and draws live here.
    """

    #: Registry id of the environment and the gymnasium id whose dynamics it reproduces.
    env_id: str = ""
    gym_id: str = ""
    #: Width of the physical state returned by ``get_state``.
    state_dim: int = 0
    #: Time limit used when ``max_episode_steps`` is not given (gymnasium's default for ``gym_id``).
    default_max_episode_steps: int = 0
    #: Physical parameters exposed to domain randomisation, with their nominal values (read-only).
    parameters: Mapping[str, float] = MappingProxyType({})

    single_observation_space: gymnasium.spaces.Space
    single_action_space: gymnasium.spaces.Space

    def __init__(
        self,
        num_envs: int,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        seed: int | None = None,
        max_episode_steps: int | None = None,
    ) -> None:
        if int(num_envs) < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating point torch dtype, got {dtype}")
        steps = self.default_max_episode_steps if max_episode_steps is None else int(max_episode_steps)
        if steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
        self.num_envs = int(num_envs)
        self.device = torch.device(device)
        self.dtype = dtype
        self.max_episode_steps = steps
        self.generator = torch.Generator(device=self.device)
        self._seed_generator(seed)
        self.elapsed_steps = torch.zeros(self.num_envs, dtype=torch.int32, device=self.device)
        # A placeholder until reset(): drawing here would shift the stream that reset() sees, so
        # `make(seed=s).reset()` and `make().reset(seed=s)` agree.
        self.state = torch.zeros(self.num_envs, self.state_dim, dtype=dtype, device=self.device)
        # float64 (MPS has none) so that coefficients combine exactly as gymnasium's Python floats do.
        self.param_dtype = torch.float32 if self.device.type == "mps" else torch.float64
        self.params: dict[str, torch.Tensor] = {
            name: torch.full((self.num_envs,), float(value), dtype=self.param_dtype, device=self.device)
            for name, value in self.parameters.items()
        }
        self.randomization: dict[str, tuple[float, float]] = {}

    # ----------------------------------------------------------------------------- public API

    @property
    def observation_space(self) -> gymnasium.spaces.Space:
        """The batched observation space, as a gymnasium ``VectorEnv`` would report it."""
        return batch_space(self.single_observation_space, self.num_envs)

    @property
    def action_space(self) -> gymnasium.spaces.Space:
        """The batched action space, as a gymnasium ``VectorEnv`` would report it."""
        return batch_space(self.single_action_space, self.num_envs)

    def reset(self, seed: int | None = None) -> tuple[torch.Tensor, dict]:
        """Start a new episode in every environment; returns ``(obs, {})``."""
        if seed is not None:
            self._seed_generator(seed)
        self._draw_parameters(None)
        self.state.copy_(self._initial_state())
        self.elapsed_steps.zero_()
        return self._observe(self.state), {}

    def step(self, actions: torch.Tensor) -> StepResult:
        """Advance every environment by one step, autoresetting those whose episode ended."""
        next_state, reward, terminated = self._dynamics(self.state, self._coerce_actions(actions))
        final_obs = self._observe(next_state)
        steps = self.elapsed_steps + 1
        truncated = steps >= self.max_episode_steps
        done = terminated | truncated
        # Sampling for every env and selecting with `where` avoids a data-dependent (syncing) index.
        # State, parameters and counters are updated in place so that a captured CUDA graph of `step` replays.
        self._draw_parameters(done)
        self.state.copy_(torch.where(done.unsqueeze(-1), self._initial_state(), next_state))
        self.elapsed_steps.copy_(steps.masked_fill_(done, 0))
        return self._observe(self.state), reward, terminated, truncated, {"final_obs": final_obs}

    def get_state(self) -> torch.Tensor:
        """A copy of the physical state, shape ``(num_envs, state_dim)``."""
        return self.state.clone()

    def set_state(self, state: torch.Tensor, elapsed_steps: int | torch.Tensor | None = None) -> None:
        """Put every env in ``state`` (``(num_envs, state_dim)`` or one broadcast row).

        ``elapsed_steps`` (an int or a ``(num_envs,)`` tensor) overwrites the step counters used for
        truncation; ``None`` leaves them as they are.
        """
        state = torch.as_tensor(state, dtype=self.dtype, device=self.device)
        rows = state.shape[0] if state.dim() == 2 else 1
        if state.dim() not in (1, 2) or state.shape[-1] != self.state_dim or rows not in (1, self.num_envs):
            expected = f"({self.num_envs}, {self.state_dim})"
            raise ValueError(f"state must have shape {expected}, got {tuple(state.shape)}")
        self.state.copy_(state.expand(self.num_envs, self.state_dim))
        if elapsed_steps is not None:
            steps = torch.as_tensor(elapsed_steps, dtype=torch.int32, device=self.device)
            self.elapsed_steps.copy_(steps.expand(self.num_envs))

    def get_parameters(self) -> dict[str, torch.Tensor]:
        """A copy of every row's physical parameters: name -> ``(num_envs,)`` tensor."""
        return {name: value.clone() for name, value in self.params.items()}

    def set_parameters(self, values: Mapping[str, float | torch.Tensor], rows: torch.Tensor | None = None) -> None:
        """Overwrite parameters in every row, or in ``rows`` only (no host synchronisation).

        ``rows``: ``None`` (all), a ``(num_envs,)`` bool mask, or a tensor of row indices. A value is
        a number, or a tensor with one value per row (``(num_envs,)`` for a mask, one per index).
        """
        self._check_names(values)
        for name, value in values.items():
            current = self.params[name]
            value = torch.as_tensor(value, dtype=self.param_dtype, device=self.device)
            if rows is None:
                current.copy_(value.expand(self.num_envs))
            elif rows.dtype == torch.bool:
                current.copy_(torch.where(rows.to(self.device), value.expand(self.num_envs), current))
            else:
                index = rows.to(self.device).long().reshape(-1)
                current.index_copy_(0, index, value.expand(index.shape[0]))

    def set_randomization(self, ranges: Mapping[str, Sequence[float]]) -> None:
        """Draw each named parameter uniformly in its ``(low, high)`` at every episode start from now on.

        An empty mapping stops the draws (the rows keep their current values).
        """
        self._check_names(ranges)
        checked = {}
        for name, bounds in ranges.items():
            low, high = (float(b) for b in bounds)
            if not (math.isfinite(low) and math.isfinite(high)) or low > high:
                raise ValueError(f"{name}: expected a finite range [low, high] with low <= high, got {list(bounds)}")
            problem = catalogue.outside_minimum(low, self._parameter_minimum(name))
            if problem:
                raise ValueError(f"{name} {problem} (it is a physical quantity), got the range {list(bounds)}")
            checked[name] = (low, high)
        self.randomization = checked

    def _parameter_minimum(self, name: str) -> tuple[float, bool] | None:
        """This class's ``parameter_minimums`` for ``name``, else the bundled bound if it is a bundled parameter."""
        return catalogue.class_parameter_minimum(self.env_id, getattr(self, "parameter_minimums", {}), name)

    def close(self) -> None:
        """Release resources (nothing to release for the bundled simulators)."""

    def __enter__(self) -> TensorEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.env_id!r}, num_envs={self.num_envs}, device={self.device})"

    # ----------------------------------------------------------------------------- subclass hooks

    def _initial_state(self) -> torch.Tensor:
        """A fresh ``(num_envs, state_dim)`` initial state drawn from ``self.generator``."""
        raise NotImplementedError

    def _dynamics(self, state: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One step of physics: ``(next_state, reward, terminated)``; must not modify ``state``."""
        raise NotImplementedError

    def _observe(self, state: torch.Tensor) -> torch.Tensor:
        """The observation of ``state``, as a new tensor (callers may keep it)."""
        raise NotImplementedError

    # ----------------------------------------------------------------------------- helpers

    def _seed_generator(self, seed: int | None) -> None:
        if seed is None:
            self.generator.seed()  # non-deterministic, like gymnasium's reset(seed=None)
        else:
            self.generator.manual_seed(int(seed))

    def _check_names(self, names: Mapping[str, object]) -> None:
        for name in names:
            if name not in self.params:
                known = ", ".join(self.params) or "none"
                raise KeyError(
                    f"{self.env_id or type(self).__name__} has no parameter '{name}'"
                    f"{did_you_mean(name, self.params)}; its parameters: {known}"
                )

    def _draw_parameters(self, rows: torch.Tensor | None) -> None:
        """Fresh draws of the randomised parameters for every row (``None``) or where ``rows`` is true."""
        for name, (low, high) in self.randomization.items():
            fresh = torch.empty(self.num_envs, dtype=self.param_dtype, device=self.device)
            fresh.uniform_(low, high, generator=self.generator)
            current = self.params[name]
            current.copy_(fresh if rows is None else torch.where(rows, fresh, current))

    def _coef(self, value: torch.Tensor) -> torch.Tensor:
        """A per-row coefficient in the state's dtype, rounded as a Python float meeting the state would be."""
        return value.to(self.dtype)

    def _coerce_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Actions as a tensor on our device: long indices (Discrete) or ``dtype`` values (Box)."""
        if isinstance(self.single_action_space, gymnasium.spaces.Discrete):
            return torch.as_tensor(actions, device=self.device).reshape(self.num_envs).long()
        actions = torch.as_tensor(actions, dtype=self.dtype, device=self.device)
        return actions.reshape(self.num_envs, *self.single_action_space.shape)

    def _round_f32(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` rounded to float32 precision (kept in ``dtype``), to mirror numpy's float32 arithmetic."""
        return x if self.dtype == torch.float32 else x.to(torch.float32).to(self.dtype)

    def _uniform(self, low: float, high: float, *shape: int) -> torch.Tensor:
        """Uniform samples in ``[low, high)`` of shape ``(num_envs, *shape)``, from our generator."""
        out = torch.empty(self.num_envs, *shape, dtype=self.dtype, device=self.device)
        return out.uniform_(low, high, generator=self.generator)
