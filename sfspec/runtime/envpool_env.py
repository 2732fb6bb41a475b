"""EnvPool (the optional ``envpool`` package) as a batched CPU simulator for gymnasium ids.

EnvPool steps its environments in C++ threads, without Python in the loop: for MuJoCo tasks it is
several times faster than gymnasium's vector envs. It autoresets on the *next* step: the step after
an episode ends ignores its action and returns the new episode's first observation, with reward 0.
The adapter reports that step as not valid (``Step.valid``), as ``GymVectorAdapter`` does for
gymnasium's next-step envs, and the observation of the ending step is the true final observation
the trainer bootstraps from. Env ``i`` is seeded with ``seed + i``; EnvPool fixes seeds when the pool
is made, so a reset with another seed makes the pool again (about 20 ms), and the same spec and seed
give the same run.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from sfspec.runtime.vec_env import EnvStepError, GymVectorAdapter, ObsDict
from sfspec.spec.environment import ENVPOOL_SET_BY_SFSPEC


def make_envpool(env_id: str, num_envs: int, seed: int, kwargs: dict) -> Any:
    """A synchronous EnvPool of ``num_envs`` gymnasium-API environments, env ``i`` seeded with ``seed + i``."""
    try:
        import envpool
    except ImportError as exc:  # validation names this at env.vectorization; here for the Python API
        raise EnvStepError(f"{env_id}: vectorization 'envpool' needs the envpool package ({exc})") from None
    clash = sorted(set(kwargs) & set(ENVPOOL_SET_BY_SFSPEC))
    if clash:
        raise EnvStepError(f"{env_id}: env.kwargs may not set {', '.join(clash)} (sfspec sets them)")
    # batch_size == num_envs: every step waits for all environments (EnvPool's synchronous mode)
    options = {"num_envs": num_envs, "batch_size": num_envs, "seed": int(seed), **kwargs}
    try:
        with warnings.catch_warnings():  # EnvPool's float64 bounds cast to a float32 Box: expected, not news
            warnings.simplefilter("ignore", UserWarning)
            pool = envpool.make_gymnasium(env_id, **options)
            _ = pool.single_observation_space, pool.single_action_space  # built (lazily) here, quietly
        return pool
    except Exception as exc:
        raise EnvStepError(f"{env_id}: EnvPool could not make it: {type(exc).__name__}: {exc}") from None


class EnvPoolAdapter(GymVectorAdapter):
    """An EnvPool of gymnasium-API environments; observations are copied to ``device``."""

    def __init__(self, env_id: str, num_envs: int, seed: int, kwargs: dict, device: torch.device):
        self._seed, self._kwargs, self._fresh = int(seed), dict(kwargs), True
        super().__init__(make_envpool(env_id, num_envs, seed, kwargs), env_id, device, next_step_reset=True)

    def reset(self, seed: int | None = None) -> ObsDict:
        """Reset every environment (env i seeded with seed + i, as gymnasium's vector envs do)."""
        if seed is not None and (int(seed) != self._seed or not self._fresh):
            self.env.close()  # EnvPool seeds once, when made: make it again for this seed
            self._seed = int(seed)
            self.env = make_envpool(self.env_id, self.num_envs, self._seed, self._kwargs)
        self._fresh = False
        return super().reset(seed=None)  # EnvPool warns on reset(seed=...): its seed was given when made
