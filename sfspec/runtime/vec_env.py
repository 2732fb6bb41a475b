"""Batched environments as the trainer sees them: dicts of observation tensors on the training device.

Two adapters share one interface: ``TensorEnvAdapter`` for environments that are themselves tensors
(their data never leaves the device) and ``GymVectorAdapter`` for gymnasium vector envs (sync, async
or the env's own batched entry point), which copy once per step between host and device.
Both autoreset in the same step and return the true final observation for bootstrapping.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sfspec.compiler.spaces import ActionLayout, env_actions, flatten_space

ObsDict = dict[str, torch.Tensor]


class EnvStepError(RuntimeError):
    """The environment raised while stepping or resetting."""


@dataclass
class Step:
    """One batched transition."""

    obs: ObsDict  # next observations (already reset where an episode ended)
    reward: torch.Tensor  # (N,) float32
    terminated: torch.Tensor  # (N,) bool
    truncated: torch.Tensor  # (N,) bool
    final_obs: ObsDict | None  # observations before reset (None when no env truncated or ended)


def flatten_obs(obs: Any, keys: list[str]) -> dict[str, Any]:
    """A (nested) dict/tuple observation batch as a flat dict keyed like the model's inputs."""
    if keys == ["obs"]:
        return {"obs": obs}
    out = {}
    for key in keys:
        value = obs
        for part in key.split("."):
            value = value[int(part)] if isinstance(value, (tuple, list)) else value[part]
        out[key] = value
    return out


class TensorEnvAdapter:
    """A bundled (or user-registered) tensor env: everything stays on its device."""

    def __init__(self, env: Any, env_id: str, device: torch.device):
        self.env = env
        self.env_id = env_id
        self.device = device
        self.num_envs = env.num_envs
        self.observation_space = env.single_observation_space
        self.action_space = env.single_action_space
        self.keys = list(flatten_space(self.observation_space))
        self.on_device = True

    def reset(self, seed: int | None = None) -> ObsDict:
        """Reset every environment."""
        obs, _ = self.env.reset(seed=seed)
        return flatten_obs(obs, self.keys)

    def step(self, actions: torch.Tensor, layout: ActionLayout) -> Step:
        """Step with flat env-unit actions (N, A)."""
        if layout.container != "plain":
            raise EnvStepError(f"{self.env_id}: tensor envs take a single Box or Discrete action")
        part = layout.parts[0]
        env_action = actions[:, 0].long() if part.kind == "categorical" else actions.reshape(-1, *part.shape)
        obs, reward, terminated, truncated, info = self.env.step(env_action)
        final = info.get("final_obs")
        return Step(
            flatten_obs(obs, self.keys),
            reward.to(torch.float32),
            terminated,
            truncated,
            flatten_obs(final, self.keys) if final is not None else None,
        )

    def snapshot(self) -> dict:
        """Everything needed to continue exactly here (for checkpoints)."""
        return {
            "state": self.env.get_state(),
            "elapsed_steps": self.env.elapsed_steps.clone(),
            "generator": self.env.generator.get_state(),
        }

    def restore(self, snapshot: dict) -> ObsDict:
        """Continue from a snapshot; returns the current observations."""
        self.env.set_state(snapshot["state"].to(self.device), snapshot["elapsed_steps"].to(self.device))
        self.env.generator.set_state(snapshot["generator"])
        return flatten_obs(self.env._observe(self.env.state), self.keys)

    def close(self) -> None:
        """Release the environment."""
        self.env.close()


class GymVectorAdapter:
    """A gymnasium vector env with same-step autoreset; observations are copied to ``device``."""

    def __init__(self, env: Any, env_id: str, device: torch.device):
        self.env = env
        self.env_id = env_id
        self.device = device
        self.num_envs = env.num_envs
        self.observation_space = env.single_observation_space
        self.action_space = env.single_action_space
        self.keys = list(flatten_space(self.observation_space))
        self.on_device = False

    def _to_device(self, obs: Any) -> ObsDict:
        return {k: torch.as_tensor(np.asarray(v)).to(self.device) for k, v in flatten_obs(obs, self.keys).items()}

    def reset(self, seed: int | None = None) -> ObsDict:
        """Reset every environment (env i seeded with seed + i)."""
        try:
            obs, _ = self.env.reset(seed=seed)
        except Exception as exc:
            raise EnvStepError(f"{self.env_id}: reset raised {type(exc).__name__}: {exc}") from exc
        return self._to_device(obs)

    def step(self, actions: torch.Tensor, layout: ActionLayout) -> Step:
        """Step with flat env-unit actions (N, A)."""
        batched = env_actions(actions.detach().cpu().numpy(), layout)
        try:
            obs, reward, terminated, truncated, info = self.env.step(batched)
        except Exception as exc:
            raise EnvStepError(f"{self.env_id}: step raised {type(exc).__name__}: {exc}") from exc
        final_obs = None
        done = np.logical_or(terminated, truncated)
        if done.any():
            final_obs = self._final_obs(obs, info, done)
        return Step(
            self._to_device(obs),
            torch.as_tensor(np.asarray(reward, dtype=np.float32)).to(self.device),
            torch.as_tensor(np.asarray(terminated, dtype=bool)).to(self.device),
            torch.as_tensor(np.asarray(truncated, dtype=bool)).to(self.device),
            final_obs,
        )

    def _final_obs(self, obs: Any, info: dict, done: np.ndarray) -> ObsDict:
        """Observations before reset: the reset ones, replaced by ``final_obs`` where an episode ended."""
        flat = {k: np.array(v, copy=True) for k, v in flatten_obs(obs, self.keys).items()}
        finals = info["final_obs"]
        for i in np.flatnonzero(done):
            for key, value in flatten_obs(finals[i], self.keys).items():
                flat[key][i] = value
        return {k: torch.as_tensor(v).to(self.device) for k, v in flat.items()}

    def close(self) -> None:
        """Close the environments."""
        self.env.close()


def make_env(env_cfg: dict, seed: int, device: torch.device) -> TensorEnvAdapter | GymVectorAdapter:
    """The batched environment a spec's ``env`` section describes."""
    env_id, num_envs, kwargs = env_cfg["id"], int(env_cfg.get("num_envs", 8)), dict(env_cfg.get("kwargs", {}))
    if env_id.startswith("sfspec/"):
        from sfspec.envs import make_tensor_env

        return TensorEnvAdapter(make_tensor_env(env_id, num_envs, device=device, seed=seed, **kwargs), env_id, device)
    import gymnasium as gym
    from gymnasium.vector import AutoresetMode

    mode = env_cfg.get("vectorization", "auto")
    if mode == "auto":
        mode = "sync"
    vector_kwargs = {"autoreset_mode": AutoresetMode.SAME_STEP}
    if mode == "vector_entry_point":
        spec = gym.spec(env_id)
        supported = (spec.kwargs or {}).get("autoreset_mode") or _entry_point_autoreset(spec)
        if supported != AutoresetMode.SAME_STEP:
            raise EnvStepError(
                f"{env_id}'s own batched entry point autoresets on the next step, which loses the final "
                "observation sfspec bootstraps from; use vectorization: sync or async"
            )
        vector_kwargs = {}
    env = gym.make_vec(env_id, num_envs, vectorization_mode=mode, vector_kwargs=vector_kwargs, **kwargs)
    return GymVectorAdapter(env, env_id, device)


def _entry_point_autoreset(spec: Any) -> Any:
    import gymnasium as gym

    entry = spec.vector_entry_point
    if entry is None:
        return None
    cls = gym.envs.registration.load_env_creator(entry) if isinstance(entry, str) else entry
    return getattr(cls, "metadata", {}).get("autoreset_mode")
