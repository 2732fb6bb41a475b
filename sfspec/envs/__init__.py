"""Bundled batched-tensor environments (Isaac-Gym style) and their registry.

>>> env = make_tensor_env("sfspec/CartPole-v1", num_envs=4096, seed=0)
>>> obs, _ = env.reset()
>>> obs, reward, terminated, truncated, info = env.step(torch.randint(0, 2, (4096,)))

Nothing else in ``sfspec`` imports this package; it pulls in torch.
"""

from __future__ import annotations

import difflib

import torch

from sfspec.envs.base import TensorEnv
from sfspec.envs.classic import AcrobotEnv, CartPoleEnv, MountainCarContinuousEnv, PendulumEnv
from sfspec.envs.tasks import MemoryEnv, PixelGoalEnv, ReachEnv

__all__ = [
    "TENSOR_ENVS",
    "AcrobotEnv",
    "CartPoleEnv",
    "MemoryEnv",
    "MountainCarContinuousEnv",
    "PendulumEnv",
    "PixelGoalEnv",
    "ReachEnv",
    "TensorEnv",
    "is_tensor_env",
    "make_tensor_env",
    "register_tensor_env",
]

TENSOR_ENVS: dict[str, type[TensorEnv]] = {
    cls.env_id: cls
    for cls in (CartPoleEnv, PendulumEnv, AcrobotEnv, MountainCarContinuousEnv, MemoryEnv, PixelGoalEnv, ReachEnv)
}


def register_tensor_env(env_id: str, cls: type[TensorEnv]) -> None:
    """Make ``cls`` available to ``make_tensor_env`` under ``env_id`` (replacing any previous entry)."""
    if not (isinstance(cls, type) and issubclass(cls, TensorEnv)):
        raise TypeError(f"{cls!r} is not a TensorEnv subclass")
    TENSOR_ENVS[env_id] = cls


def is_tensor_env(env_id: str) -> bool:
    """Whether ``env_id`` names a registered tensor environment."""
    return env_id in TENSOR_ENVS


def make_tensor_env(
    env_id: str,
    num_envs: int,
    device: str | torch.device = "cpu",
    seed: int | None = None,
    **kwargs,
) -> TensorEnv:
    """Build ``num_envs`` copies of the registered env ``env_id``; ``kwargs`` go to its constructor."""
    try:
        cls = TENSOR_ENVS[env_id]
    except KeyError:
        close = difflib.get_close_matches(env_id, list(TENSOR_ENVS), n=1, cutoff=0.5)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        known = ", ".join(sorted(TENSOR_ENVS))
        raise KeyError(f"unknown tensor env '{env_id}'{hint}; known: {known}") from None
    return cls(num_envs, device=device, seed=seed, **kwargs)
