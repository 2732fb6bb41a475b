"""Make tensor environments by id, and register new ones (the torch side of the catalogue)."""

from __future__ import annotations

import torch

from sfspec.envs import catalogue
from sfspec.envs.base import TensorEnv
from sfspec.errors import did_you_mean


def register_tensor_env(env_id: str, cls: type[TensorEnv]) -> None:
    """Make ``cls`` available under ``env_id`` to specs, validation and ``make_tensor_env`` (replacing any entry)."""
    if not (isinstance(cls, type) and issubclass(cls, TensorEnv)):
        raise TypeError(f"{cls!r} is not a TensorEnv subclass")
    catalogue.add(catalogue.EnvEntry(env_id, cls=cls))


def make_tensor_env(
    env_id: str,
    num_envs: int,
    device: str | torch.device = "cpu",
    seed: int | None = None,
    **kwargs,
) -> TensorEnv:
    """Build ``num_envs`` copies of the registered env ``env_id``; ``kwargs`` go to its constructor."""
    if not catalogue.is_tensor_env(env_id):
        known = catalogue.tensor_env_ids()
        raise KeyError(f"unknown tensor env '{env_id}'{did_you_mean(env_id, known)}; known: {', '.join(known)}")
    return catalogue.env_class(env_id)(num_envs, device=device, seed=seed, **kwargs)
