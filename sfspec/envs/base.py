"""The batched-tensor environment interface shared by every bundled simulator."""

from __future__ import annotations

import gymnasium
import torch
from gymnasium.vector.utils import batch_space

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

    Subclasses set ``env_id``, ``gym_id``, ``state_dim``, ``default_max_episode_steps`` and the two
    ``single_*_space`` attributes (before calling ``TensorEnv.__init__``), and implement
    ``_initial_state``, ``_dynamics`` and ``_observe``; batching, autoreset, the time limit and
    seeding live here.
    """

    #: Registry id of the environment and the gymnasium id whose dynamics it reproduces.
    env_id: str = ""
    gym_id: str = ""
    #: Width of the physical state returned by ``get_state``.
    state_dim: int = 0
    #: Time limit used when ``max_episode_steps`` is not given (gymnasium's default for ``gym_id``).
    default_max_episode_steps: int = 0

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
        # State and counters are updated in place so that a captured CUDA graph of `step` replays.
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
