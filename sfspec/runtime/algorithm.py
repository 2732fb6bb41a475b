"""Training algorithms by name: what the runner drives, and the registry a spec's ``train.algorithm`` names.

Torch-free: the spec schema is assembled from the registered algorithms' ``train:`` fragments.
Adding an algorithm is one module (a class with the ``Algorithm`` methods) and one registration::

    register_algorithm("sac", params={"tau": {"type": "number", "default": 0.005}, ...}, make=SAC)

``make(model, env, train, device, comm)`` builds it for a compiled model and a batched env; ``train``
is the spec's ``train:`` mapping as written (the algorithm resolves its own defaults from ``params``).
``comm`` is the communicator of a data-parallel run (``sfspec.runtime.distributed``: ``NoComm`` for
one process): an algorithm that supports torchrun reduces what it must at its own synchronisation
points (PPO: gradients, advantage statistics, KL, normalisers, episode statistics), counts
``steps_per_iteration`` over all ranks and names in ``local_keys`` the ``state_dict()`` keys that
differ between ranks (checkpoints keep one copy of those per rank). One that does not refuses
``comm.world_size > 1``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sfspec.compiler.registry import Registry
from sfspec.runtime.config import PPO_PARAMS, RUNNER_PARAMS

if TYPE_CHECKING:
    import torch

    from sfspec.compiler.model import ActorCritic
    from sfspec.runtime.distributed import NoComm


class Algorithm(Protocol):
    """What the runner needs of an algorithm; it owns its storage, optimiser, normalisers and carry-over."""

    steps_per_iteration: int  # environment steps one iteration takes (all envs of all ranks together)
    total_iterations: int  # iterations in the spec's budget
    local_keys: tuple[str, ...]  # state_dict() keys that differ between ranks (optional; default none)

    def start(self, obs: dict[str, torch.Tensor]) -> None:
        """Begin from the environments' first observations (after reset or restore)."""

    def iteration(self, env: Any, index: int) -> dict[str, torch.Tensor]:
        """Collect experience from ``env`` and update the model once; statistics as device tensors."""

    def episode_stats(self) -> tuple[float | None, float | None, int]:
        """Mean return and length of the episodes finished since the last call, and their number."""

    def learning_rate(self) -> float:
        """The optimiser's current learning rate (for the log)."""

    def state_dict(self) -> dict[str, Any]:
        """Everything besides the model that a checkpoint needs to continue exactly."""

    def load_state_dict(self, state: dict[str, Any], exact: bool) -> None:
        """Restore ``state_dict()``; ``exact`` when the environments were restored too (tensor envs)."""


@dataclass(frozen=True)
class AlgorithmEntry:
    """A registered algorithm: its ``train:`` schema fragment and how to build it."""

    name: str
    params: dict  # JSON Schema properties of its own train: keys, with defaults
    make: Callable[..., Algorithm]  # make(model, env, train, device, comm)
    description: str = ""


ALGORITHMS: Registry[AlgorithmEntry] = Registry("algorithm")


def register_algorithm(
    name: str, params: dict, make: Callable[..., Algorithm], description: str = "", force: bool = False
) -> AlgorithmEntry:
    """Register an algorithm under ``name``; its ``params`` join the spec's ``train:`` schema."""
    entry = AlgorithmEntry(name, dict(params), make, description)
    ALGORITHMS.register(name, entry, force=force)
    return entry


def make_algorithm(
    model: ActorCritic, env: Any, train: dict, device: torch.device, comm: NoComm | None = None
) -> Algorithm:
    """The algorithm ``train.algorithm`` names, built for ``model`` and ``env`` (and this rank's ``comm``)."""
    entry = ALGORITHMS.get(train.get("algorithm", RUNNER_PARAMS["algorithm"]["default"]))
    if comm is None:
        from sfspec.runtime.distributed import NoComm

        comm = NoComm()
    return entry.make(model, env, train, device, comm)


def _make_ppo(model: ActorCritic, env: Any, train: dict, device: torch.device, comm: NoComm) -> Algorithm:
    from sfspec.runtime.ppo import PPO  # torch only when training

    return PPO(model, env, train, device, comm)


register_algorithm("ppo", PPO_PARAMS, _make_ppo, "proximal policy optimisation, synchronous, on the device")
