"""Observation noise and observation/action delays between an environment and the policy (training only).

``RobustnessAdapter`` wraps either env adapter of ``vec_env`` and keeps its interface. Everything
is batched tensor work on the env's device (no ``.item()``, no Python branch on tensor values), so
a tensor env's rollout still makes no host round trip. Delays drawn per episode and the noise come
from the adapter's own generator, seeded from the run's seed; its buffers, delays and generator
state are part of ``snapshot()`` so ``--resume`` continues exactly. Exported bundles never see any
of it: the policy's inputs are the env's, only their values are perturbed here.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from sfspec.compiler.spaces import ActionLayout, action_layout, flatten_space
from sfspec.spec.config import EnvConfig

ObsDict = dict[str, torch.Tensor]
SEED_OFFSET = 7_777_777  # keeps this generator's stream apart from the env's own, seeded with the same seed


def default_action(layout: ActionLayout) -> list[float]:
    """The flat env-unit action pending at an episode's start: a Box's zero (its centre if zero is out of
    bounds), a Discrete space's first action (0 for ``Discrete(n)``), MultiBinary's zeros."""
    values: list[float] = []
    for part in layout.parts:
        if part.kind in ("categorical", "multi_categorical"):
            values.extend(float(v) for v in part.offset)
        elif part.kind == "bernoulli":
            values.extend([0.0] * part.size)
        else:
            values.extend(_box_rest(low, high) for low, high in zip(part.low, part.high, strict=True))
    return values


def _box_rest(low: float, high: float) -> float:
    """Zero where the bounds allow it, else their centre (or the finite bound nearest zero)."""
    if low <= 0.0 <= high:
        return 0.0
    if math.isfinite(low) and math.isfinite(high):
        return (low + high) / 2
    return low if low > 0.0 else high


class RobustnessAdapter:
    """An env adapter whose policy sees noisy, delayed observations and whose actions reach the env late."""

    def __init__(self, inner: Any, cfg: EnvConfig, seed: int):
        self.inner = inner
        self.env_id, self.device, self.num_envs = inner.env_id, inner.device, inner.num_envs
        self.observation_space, self.action_space, self.keys = inner.observation_space, inner.action_space, inner.keys
        self.on_device = inner.on_device
        self.next_step_reset = getattr(inner, "next_step_reset", False)
        self.obs_delay, self.action_delay = cfg.observation_delay, cfg.action_delay
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed + SEED_OFFSET)
        leaves = flatten_space(self.observation_space)
        self.noise = {
            key: (entry.type, _std_tensor(entry.std, tuple(leaves[key].shape), self.device))
            for key, entry in cfg.noise.items()
        }
        rest = default_action(action_layout(self.action_space)) if self.action_delay[1] else []
        self._rest = torch.tensor(rest, dtype=torch.float32, device=self.device)  # flat env-unit pending action
        self._rows = torch.arange(self.num_envs, device=self.device)
        self._d_obs = torch.full((self.num_envs,), self.obs_delay[0], dtype=torch.long, device=self.device)
        self._d_act = torch.full((self.num_envs,), self.action_delay[0], dtype=torch.long, device=self.device)
        self._obs_buf: ObsDict | None = None  # (D + 1, N, ...): index d holds the observation from d steps ago
        self._act_buf: torch.Tensor | None = None  # (D + 1, N, A); None: every row's pending actions are the default
        self._last: ObsDict | None = None  # what the policy saw last (returned by restore)

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (copying): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)  # the inner adapter's other attributes (its env, ...)

    def reset(self, seed: int | None = None) -> ObsDict:
        """Reset every environment; every row draws its delays and fills its buffer with its first observation."""
        obs = self.inner.reset(seed=seed)
        if seed is not None:
            self.generator.manual_seed(seed + SEED_OFFSET)
        every = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
        self._d_obs = self._draw(self.obs_delay, self._d_obs, every)
        self._d_act = self._draw(self.action_delay, self._d_act, every)
        self._obs_buf = {k: v.unsqueeze(0).expand(self.obs_delay[1] + 1, *v.shape).clone() for k, v in obs.items()}
        self._act_buf = None
        self._last = self._noisy(self._delayed(self._obs_buf))
        return self._last

    def step(self, actions: torch.Tensor, layout: ActionLayout):
        """Step with the actions chosen ``action delay`` steps ago; return what the policy sees."""
        step = self.inner.step(self._delayed_actions(actions), layout)
        if self.next_step_reset:  # the reset step (not valid) brings an episode's first observation
            starts = ~step.valid
        else:
            starts = step.terminated | step.truncated
        final = None
        if step.final_obs is not None and not self.next_step_reset:  # seen with the ending episode's delay
            final = self._noisy(self._delayed(self._pushed(step.final_obs)))
        pushed = self._pushed(step.obs)
        self._obs_buf = {k: torch.where(_rows_mask(starts, v), step.obs[k].unsqueeze(0), v) for k, v in pushed.items()}
        self._d_obs = self._draw(self.obs_delay, self._d_obs, starts)
        self._d_act = self._draw(self.action_delay, self._d_act, starts)
        if self._act_buf is not None:  # a new episode starts with default pending actions
            rest = self._rest.to(self._act_buf.dtype)
            self._act_buf = torch.where(_rows_mask(starts, self._act_buf), rest, self._act_buf)
        obs = self._noisy(self._delayed(self._obs_buf))
        if step.final_obs is not None and self.next_step_reset:  # such an env's final observation is its obs
            final = obs
        self._last = obs
        return type(step)(obs, step.reward, step.terminated, step.truncated, final, step.valid)

    def _delayed_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """The actions the env executes: each row's from its delay's steps ago (no host sync)."""
        if self.action_delay[1] == 0:
            return actions
        if self._act_buf is None:
            rest = self._rest.to(actions.dtype)
            self._act_buf = rest.expand(self.action_delay[1] + 1, *actions.shape).clone()
        self._act_buf = torch.cat([actions.unsqueeze(0), self._act_buf[:-1]])
        return self._act_buf[self._d_act, self._rows]

    def _pushed(self, obs: ObsDict) -> ObsDict:
        """The observation history with ``obs`` as the newest entry."""
        return {k: torch.cat([obs[k].unsqueeze(0), v[:-1]]) for k, v in self._obs_buf.items()}

    def _delayed(self, history: ObsDict) -> ObsDict:
        """Each row's observation from its delay's steps ago."""
        return {k: v[self._d_obs, self._rows] for k, v in history.items()}

    def _noisy(self, obs: ObsDict) -> ObsDict:
        """Observations with fresh noise on the inputs ``env.noise`` names."""
        out = dict(obs)
        for key, (kind, std) in self.noise.items():
            value = obs[key]
            if kind == "uniform":  # U(-a, a) has std a / sqrt(3)
                draw = (torch.rand(value.shape, generator=self.generator, device=self.device) * 2 - 1) * math.sqrt(3)
            else:
                draw = torch.randn(value.shape, generator=self.generator, device=self.device)
            out[key] = value + (draw * std).to(value.dtype)
        return out

    def _draw(self, bounds: tuple[int, int], previous: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Per-row delays: redrawn uniformly in [low, high] where ``rows`` start an episode, kept elsewhere."""
        low, high = bounds
        if low == high:
            return previous
        drawn = torch.randint(low, high + 1, previous.shape, generator=self.generator, device=self.device)
        return torch.where(rows, drawn, previous)

    def close(self) -> None:
        """Release the environments."""
        self.inner.close()

    def snapshot(self) -> dict:
        """The inner env's snapshot, with the delays, buffers and generator (for exact resumes)."""
        return {
            **self.inner.snapshot(),
            "robustness": {
                "generator": self.generator.get_state(),
                "observation_delay": self._d_obs.clone(),
                "action_delay": self._d_act.clone(),
                "observations": {k: v.clone() for k, v in self._obs_buf.items()},
                "actions": self._act_buf.clone() if self._act_buf is not None else None,
                "last": {k: v.clone() for k, v in self._last.items()},
            },
        }

    def restore(self, snapshot: dict) -> ObsDict:
        """Continue from a snapshot; returns what the policy saw last."""
        obs = self.inner.restore(snapshot)
        saved = snapshot.get("robustness")
        if saved is None:  # a checkpoint from before env.noise / env.delay: start the buffers afresh
            self._obs_buf = {k: v.unsqueeze(0).expand(self.obs_delay[1] + 1, *v.shape).clone() for k, v in obs.items()}
            self._last = self._noisy(self._delayed(self._obs_buf))
            return self._last
        self.generator.set_state(saved["generator"])
        self._d_obs = saved["observation_delay"].to(self.device)
        self._d_act = saved["action_delay"].to(self.device)
        self._obs_buf = {k: v.to(self.device) for k, v in saved["observations"].items()}
        self._act_buf = saved["actions"].to(self.device) if saved["actions"] is not None else None
        self._last = {k: v.to(self.device) for k, v in saved["last"].items()}
        return self._last


def _std_tensor(std: tuple[float, ...], shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """One std (broadcast) or one per component of the flattened input, shaped like one observation."""
    values = torch.tensor(std, dtype=torch.float32, device=device)
    return values.reshape(()) if len(std) == 1 else values.reshape(shape)


def _rows_mask(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (N,) mask shaped to broadcast over a (D + 1, N, ...) buffer."""
    return rows.reshape(1, -1, *([1] * (like.dim() - 2)))
