"""Spaces of the bundled tensor environments, without torch (the classes in sfspec.envs read them here).

``sfspec validate`` checks a spec against its environment's spaces and must not import torch,
so every bundled tensor environment declares its spaces here and its class reads them from here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from gymnasium import spaces

# Bundled tensor envs that reproduce a gymnasium env: their spaces are that env's.
GYMNASIUM_TWINS = {
    "sfspec/CartPole-v1": "CartPole-v1",
    "sfspec/Pendulum-v1": "Pendulum-v1",
    "sfspec/Acrobot-v1": "Acrobot-v1",
    "sfspec/MountainCarContinuous-v0": "MountainCarContinuous-v0",
}


def memory_spaces(num_cues: int = 4, delay: int = 8) -> tuple[Any, Any]:
    """Memory: a one-hot cue, then blank steps, then a query flag; act with the cue's index."""
    return spaces.Box(0.0, 1.0, (num_cues + 1,), np.float32), spaces.Discrete(num_cues)


def pixel_spaces(grid: int = 8, cell: int = 3) -> tuple[Any, Any]:
    """PixelGoal: an RGB picture of a grid (agent red, goal green); move in 4 directions."""
    size = grid * cell
    return spaces.Box(0, 255, (size, size, 3), np.uint8), spaces.Discrete(4)


def reach_spaces() -> tuple[Any, Any]:
    """Reach: a 2-link arm; the actor sees joints and a noisy target, the critic also the truth."""
    inf = np.inf
    obs = spaces.Dict(
        {
            "proprio": spaces.Box(-inf, inf, (6,), np.float32),  # sin q, cos q, joint velocities
            "target_seen": spaces.Box(-inf, inf, (2,), np.float32),  # noisy estimate, like a camera's
            "privileged": spaces.Box(-inf, inf, (4,), np.float32),  # true target and fingertip
        }
    )
    return obs, spaces.Box(-1.0, 1.0, (2,), np.float32)


TASK_SPACES: dict[str, Callable[..., tuple[Any, Any]]] = {
    "sfspec/Memory-v0": memory_spaces,
    "sfspec/PixelGoal-v0": pixel_spaces,
    "sfspec/Reach-v0": reach_spaces,
}

_SPACE_KWARGS = {
    "sfspec/Memory-v0": ("num_cues", "delay"),
    "sfspec/PixelGoal-v0": ("grid", "cell"),
    "sfspec/Reach-v0": (),
}


def bundled_env_ids() -> list[str]:
    """Ids of every bundled tensor environment."""
    return sorted([*GYMNASIUM_TWINS, *TASK_SPACES])


def bundled_spaces(env_id: str, kwargs: dict) -> tuple[Any, Any]:
    """(observation space, action space) of a bundled tensor env, torch-free."""
    if env_id in GYMNASIUM_TWINS:
        import gymnasium as gym

        env = gym.make(GYMNASIUM_TWINS[env_id])
        try:
            return env.observation_space, env.action_space
        finally:
            env.close()
    accepted = _SPACE_KWARGS[env_id]
    return TASK_SPACES[env_id](**{k: v for k, v in kwargs.items() if k in accepted})
