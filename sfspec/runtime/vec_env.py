"""Batched environments as the trainer sees them: dicts of observation tensors on the training device.

Two adapters share one interface: ``TensorEnvAdapter`` for environments that are themselves tensors
(their data never leaves the device) and ``GymVectorAdapter`` for gymnasium vector envs (sync, async
or the env's own batched entry point), which copy once per step between host and device; EnvPool's
(``sfspec.runtime.envpool_env``) is a ``GymVectorAdapter``. They return the true final observation for
bootstrapping; an env that autoresets on the next step reports that step as not valid.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sfspec.compiler.interface_config import InterfaceConfig
from sfspec.compiler.spaces import ActionLayout, env_actions, flatten_space
from sfspec.envs import catalogue
from sfspec.runtime.interface import InterfaceAdapter
from sfspec.runtime.robustness import RobustnessAdapter
from sfspec.spec.config import EnvConfig

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
    # Envs that autoreset on the next step: False where this step was that reset (no real transition).
    valid: torch.Tensor | None = None


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


class _Adapter:
    """What both adapters share: the env, its one-env spaces and the model's input keys."""

    on_device = False

    def __init__(self, env: Any, env_id: str, device: torch.device):
        self.env = env
        self.env_id = env_id
        self.device = device
        self.num_envs = env.num_envs
        self.observation_space = env.single_observation_space
        self.action_space = env.single_action_space
        self.keys = list(flatten_space(self.observation_space))

    def close(self) -> None:
        """Release the environments."""
        self.env.close()


class TensorEnvAdapter(_Adapter):
    """A bundled (or user-registered) tensor env: everything stays on its device."""

    on_device = True

    def __init__(self, env: Any, env_id: str, device: torch.device):
        super().__init__(env, env_id, device)
        self._obs_shapes = {k: (self.num_envs, *s.shape) for k, s in flatten_space(self.observation_space).items()}

    def reset(self, seed: int | None = None) -> ObsDict:
        """Reset every environment."""
        obs, _ = _guarded(self.env_id, "reset", lambda: self.env.reset(seed=seed))
        return self._checked_obs(obs, "reset")

    def step(self, actions: torch.Tensor, layout: ActionLayout) -> Step:
        """Step with flat env-unit actions (N, A)."""
        if layout.container != "plain":
            raise EnvStepError(f"{self.env_id}: tensor envs take a single Box or Discrete action")
        part = layout.parts[0]
        env_action = actions[:, 0].long() if part.kind == "categorical" else actions.reshape(-1, *part.shape)
        obs, reward, terminated, truncated, info = _guarded(self.env_id, "step", lambda: self.env.step(env_action))
        for name, value in (("reward", reward), ("terminated", terminated), ("truncated", truncated)):
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != (self.num_envs,):
                expected = f"expected ({self.num_envs},)"
                raise EnvStepError(f"{self.env_id}: step returned {name} {_shape_of(value)}, {expected}")
        final = info.get("final_obs")
        return Step(
            self._checked_obs(obs, "step"),
            reward.to(torch.float32),
            terminated,
            truncated,
            self._checked_obs(final, "step (final_obs)") if final is not None else None,
        )

    def _checked_obs(self, obs: Any, where: str) -> ObsDict:
        """Observations keyed like the model's inputs, each of the shape the env's space promises (no sync)."""
        try:
            flat = flatten_obs(obs, self.keys)
        except (KeyError, IndexError, TypeError) as exc:
            raise EnvStepError(f"{self.env_id}: {where} returned observations without {exc}") from None
        for key, value in flat.items():
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != self._obs_shapes[key]:
                raise EnvStepError(
                    f"{self.env_id}: {where} returned observation '{key}' {_shape_of(value)}, "
                    f"expected {self._obs_shapes[key]}"
                )
        return flat

    def snapshot(self) -> dict:
        """Everything needed to continue exactly here (for checkpoints)."""
        return {
            "state": self.env.get_state(),
            "elapsed_steps": self.env.elapsed_steps.clone(),
            "generator": self.env.generator.get_state(),
            "parameters": self.env.get_parameters(),  # each row's physics, drawn by env.randomize
        }

    def restore(self, snapshot: dict) -> ObsDict:
        """Continue from a snapshot; returns the current observations."""
        self.env.set_state(snapshot["state"].to(self.device), snapshot["elapsed_steps"].to(self.device))
        self.env.generator.set_state(snapshot["generator"])
        parameters = snapshot.get("parameters") or {}  # absent from checkpoints older than env.randomize
        self.env.set_parameters({name: value.to(self.device) for name, value in parameters.items()})
        return flatten_obs(self.env._observe(self.env.state), self.keys)


class GymVectorAdapter(_Adapter):
    """A gymnasium vector env; observations are copied to ``device``."""

    def __init__(self, env: Any, env_id: str, device: torch.device, next_step_reset: bool = False):
        super().__init__(env, env_id, device)
        # A next-step autoreset env returns the final observation itself and resets on the
        # following step, which ignores its action: that step is reported as not valid.
        self.next_step_reset = next_step_reset
        self._resetting = np.zeros(self.num_envs, dtype=bool)

    def _to_device(self, obs: Any) -> ObsDict:
        return {k: torch.as_tensor(np.asarray(v)).to(self.device) for k, v in flatten_obs(obs, self.keys).items()}

    def reset(self, seed: int | None = None) -> ObsDict:
        """Reset every environment (env i seeded with seed + i)."""
        self._resetting[:] = False
        obs, _ = _guarded(self.env_id, "reset", lambda: self.env.reset(seed=seed))
        return self._to_device(obs)

    def step(self, actions: torch.Tensor, layout: ActionLayout) -> Step:
        """Step with flat env-unit actions (N, A)."""
        batched = env_actions(actions.detach().cpu().numpy(), layout)
        obs, reward, terminated, truncated, info = _guarded(self.env_id, "step", lambda: self.env.step(batched))
        final_obs, valid = None, None
        done = np.logical_or(terminated, truncated)
        device_obs = self._to_device(obs)
        if self.next_step_reset:
            valid = torch.as_tensor(~self._resetting).to(self.device)
            self._resetting = done.copy()
            final_obs = device_obs if done.any() else None
        elif done.any():
            final_obs = self._final_obs(obs, info, done)
        return Step(
            device_obs,
            torch.as_tensor(np.asarray(reward, dtype=np.float32)).to(self.device),
            torch.as_tensor(np.asarray(terminated, dtype=bool)).to(self.device),
            torch.as_tensor(np.asarray(truncated, dtype=bool)).to(self.device),
            final_obs,
            valid,
        )

    def _final_obs(self, obs: Any, info: dict, done: np.ndarray) -> ObsDict:
        """Observations before reset: the reset ones, replaced by ``final_obs`` where an episode ended."""
        flat = {k: np.array(v, copy=True) for k, v in flatten_obs(obs, self.keys).items()}
        finals = info["final_obs"]
        for i in np.flatnonzero(done):
            for key, value in flatten_obs(finals[i], self.keys).items():
                flat[key][i] = value
        return {k: torch.as_tensor(v).to(self.device) for k, v in flat.items()}


def _guarded(env_id: str, what: str, call: Any) -> Any:
    """Run an env's reset or step; its exceptions, and its ``sys.exit``, become an EnvStepError naming it."""
    try:
        return call()
    except SystemExit as exc:
        raise EnvStepError(f"{env_id}: {what} called sys.exit({exc.code})") from None
    except EnvStepError:
        raise
    except Exception as exc:
        raise EnvStepError(f"{env_id}: {what} raised {type(exc).__name__}: {exc}") from exc


def _shape_of(value: Any) -> str:
    shape = getattr(value, "shape", None)
    return f"of shape {tuple(shape)}" if shape is not None else f"of type {type(value).__name__}"


@contextmanager
def _workers_ignore_ctrl_c(active: bool) -> Iterator[None]:
    """Start worker processes with SIGINT ignored: a terminal's Ctrl-C reaches the whole process group,
    and the trainer, not each worker, decides how to stop (at an update boundary, with a checkpoint)."""
    if not active or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited by forked and spawned workers
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def make_env(env_cfg: dict, seed: int, device: torch.device, interface: InterfaceConfig | None = None) -> Any:
    """The batched environment a spec's ``env`` section describes (with its noise and delays, if any), as
    the network sees it through the spec's robot ``interface`` (``InterfaceConfig.from_spec(spec)``), if any."""
    cfg = EnvConfig.from_spec(env_cfg)
    env = _make_plain_env(cfg, device, seed)
    if cfg.robust:  # the robot's own noise and delays, in robot units: inside the interface
        env = RobustnessAdapter(env, cfg, seed)
    return InterfaceAdapter(env, interface) if interface is not None else env


def _make_plain_env(cfg: EnvConfig, device: torch.device, seed: int) -> TensorEnvAdapter | GymVectorAdapter:
    """The env adapter itself: a tensor env's, a gymnasium vector env's, or an EnvPool's."""
    env_id, num_envs, kwargs = cfg.id, cfg.num_envs, cfg.kwargs
    if catalogue.is_tensor_env(env_id):  # bundled or registered by a plugin, whatever its namespace
        from sfspec.envs.factory import make_tensor_env

        env = make_tensor_env(env_id, num_envs, device=device, seed=seed, **kwargs)
        env.set_randomization(cfg.randomize)  # drawn per row at every episode start, from reset() on
        return TensorEnvAdapter(env, env_id, device)
    if cfg.vectorization == "envpool":  # the optional C++ batched simulator (sfspec.runtime.envpool_env)
        from sfspec.runtime.envpool_env import EnvPoolAdapter

        return EnvPoolAdapter(env_id, num_envs, seed, kwargs, device)
    import gymnasium as gym
    from gymnasium.vector import AutoresetMode

    mode = cfg.vectorization
    if mode == "auto":
        mode = "sync"
    vector_kwargs = {"autoreset_mode": AutoresetMode.SAME_STEP}
    if mode == "vector_entry_point":
        if gym.spec(env_id).vector_entry_point is None:
            raise EnvStepError(f"{env_id} has no batched entry point of its own; use vectorization: sync or async")
        vector_kwargs = {}
    with _workers_ignore_ctrl_c(mode == "async"):
        env = gym.make_vec(env_id, num_envs, vectorization_mode=mode, vector_kwargs=vector_kwargs, **kwargs)
    autoreset = env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
    if autoreset not in (AutoresetMode.SAME_STEP, AutoresetMode.NEXT_STEP):
        env.close()
        raise EnvStepError(f"{env_id}: autoreset mode {autoreset} is not supported")
    return GymVectorAdapter(env, env_id, device, next_step_reset=autoreset == AutoresetMode.NEXT_STEP)
