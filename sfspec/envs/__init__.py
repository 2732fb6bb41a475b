"""Batched tensor environments (Isaac-Gym style): the bundled ones, and the registry plugins add to.

>>> env = make_tensor_env("sfspec/CartPole-v1", num_envs=4096, seed=0)
>>> obs, _ = env.reset()
>>> obs, reward, terminated, truncated, info = env.step(torch.randint(0, 2, (4096,)))

Importing this package does not import torch: the torch-free catalogue (``sfspec.envs.catalogue``)
is what validation reads; the environment classes and ``make_tensor_env`` load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from sfspec.envs.catalogue import is_tensor_env

__all__ = [
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

_LAZY = {
    "TensorEnv": "sfspec.envs.base",
    "CartPoleEnv": "sfspec.envs.classic",
    "PendulumEnv": "sfspec.envs.classic",
    "AcrobotEnv": "sfspec.envs.classic",
    "MountainCarContinuousEnv": "sfspec.envs.classic",
    "MemoryEnv": "sfspec.envs.tasks",
    "PixelGoalEnv": "sfspec.envs.tasks",
    "ReachEnv": "sfspec.envs.tasks",
    "make_tensor_env": "sfspec.envs.factory",
    "register_tensor_env": "sfspec.envs.factory",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'sfspec.envs' has no attribute '{name}'")
    return getattr(importlib.import_module(_LAZY[name]), name)
