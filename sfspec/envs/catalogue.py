"""Every tensor environment sfspec knows, in one torch-free table: ids, spaces, parameters, where each class is.

Validation reads the spaces and the randomisable parameters from here without importing torch;
``make_env`` reads the class from here. Bundled environments are listed below; plugins add theirs
with ``register_tensor_env`` (sfspec.envs), which records the class itself.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
from gymnasium import spaces

Spaces = tuple[Any, Any]  # (observation space, action space) of one environment


def memory_spaces(num_cues: int = 4, delay: int = 8) -> Spaces:
    """Memory: a one-hot cue, then blank steps, then a query flag; act with the cue's index."""
    return spaces.Box(0.0, 1.0, (num_cues + 1,), np.float32), spaces.Discrete(num_cues)


def pixel_spaces(grid: int = 8, cell: int = 3) -> Spaces:
    """PixelGoal: an RGB picture of a grid (agent red, goal green); move in 4 directions."""
    size = grid * cell
    return spaces.Box(0, 255, (size, size, 3), np.uint8), spaces.Discrete(4)


def reach_spaces() -> Spaces:
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


def _frozen(values: dict[str, float]) -> Mapping[str, float]:
    return MappingProxyType(values)


#: The physical parameters each bundled env exposes to ``env.randomize``, with their nominal values
#: (gymnasium's constants for the classic-control twins). The classes read theirs from here.
PARAMETERS: Mapping[str, Mapping[str, float]] = MappingProxyType(
    {
        "sfspec/CartPole-v1": _frozen(
            # pole_half_length is gymnasium's `length` ("actually half the pole's length")
            {"gravity": 9.8, "cart_mass": 1.0, "pole_mass": 0.1, "pole_half_length": 0.5, "force": 10.0}
        ),
        "sfspec/Pendulum-v1": _frozen({"gravity": 10.0, "mass": 1.0, "length": 1.0}),
        "sfspec/Acrobot-v1": _frozen(
            {
                "gravity": 9.8,
                "link_length_1": 1.0,  # link 2's length only matters for drawing
                "link_mass_1": 1.0,
                "link_mass_2": 1.0,
                "link_com_1": 0.5,  # where each link's centre of mass is, from its joint
                "link_com_2": 0.5,
                "link_moi": 1.0,  # both links' moment of inertia
            }
        ),
        # gymnasium's 0.0015 (the engine) and 0.0025 (the hill's pull)
        "sfspec/MountainCarContinuous-v0": _frozen({"power": 0.0015, "gravity": 0.0025}),
        "sfspec/Reach-v0": _frozen({"link_length": 0.5, "gain": 10.0, "damping": 1.0}),
    }
)
NO_PARAMETERS: Mapping[str, float] = _frozen({})

# Each bundled env's time limit in steps (its class's default_max_episode_steps; a test keeps them
# equal): validation reads it without importing torch.
EPISODE_LIMITS: Mapping[str, int] = MappingProxyType(
    {
        "sfspec/CartPole-v1": 500,
        "sfspec/Pendulum-v1": 200,
        "sfspec/Acrobot-v1": 500,
        "sfspec/MountainCarContinuous-v0": 999,
        "sfspec/Memory-v0": 1000,
        "sfspec/PixelGoal-v0": 50,
        "sfspec/Reach-v0": 100,
    }
)

# Where a physical parameter makes sense: masses, lengths, forces and gains are positive; gravity and
# damping may also be zero. A parameter not listed here has no bound (a plugin's may declare its own
# with a ``parameter_minimums`` class attribute: name -> (minimum, inclusive)).
PARAMETER_MINIMUMS: Mapping[str, tuple[float, bool]] = MappingProxyType(
    {"gravity": (0.0, True), "damping": (0.0, True)}
)
POSITIVE = (0.0, False)


def parameter_minimum(env_id: str, name: str) -> tuple[float, bool] | None:
    """(minimum, inclusive) of parameter ``name`` of the env registered as ``env_id``, or None when it has none.

    A class's own ``parameter_minimums`` come first; a parameter of a bundled env (also one a
    plugin class inherits from it) gets the bundled bound.
    """
    cls = _CATALOGUE[env_id].cls
    if cls is None:
        return class_parameter_minimum(env_id, {}, name)
    return class_parameter_minimum(getattr(cls, "env_id", ""), getattr(cls, "parameter_minimums", {}), name)


def class_parameter_minimum(bundled_id: str, declared: Mapping, name: str) -> tuple[float, bool] | None:
    """The bound of ``name``: declared by the class, else the bundled one if ``bundled_id`` has it, else None."""
    if name in declared:
        return tuple(declared[name])
    if name in PARAMETERS.get(bundled_id, {}):
        return PARAMETER_MINIMUMS.get(name, POSITIVE)
    return None


def outside_minimum(value: float, minimum: tuple[float, bool] | None) -> str:
    """Why ``value`` lies below a parameter's minimum ('' when it does not)."""
    if minimum is None:
        return ""
    bound, inclusive = minimum
    if value > bound or (inclusive and value == bound):
        return ""
    return f"must be {'>=' if inclusive else '>'} {bound:g}"


@dataclass(frozen=True)
class EnvEntry:
    """One tensor environment: where its class is, and how to know its spaces without building it."""

    env_id: str
    location: str | None = None  # "module:Class" of a bundled env (imported when it is made)
    cls: type | None = None  # a plugin's class, registered directly
    spaces: Callable[..., Spaces] | None = None  # torch-free spaces from the env's kwargs
    twin: str | None = None  # the gymnasium id whose dynamics (and spaces) it reproduces
    # a bundled env's randomisable parameters, with their nominal values
    parameters: Mapping[str, float] = field(default_factory=lambda: NO_PARAMETERS)


def _bundled() -> dict[str, EnvEntry]:
    classic = [
        ("sfspec/CartPole-v1", "CartPoleEnv", "CartPole-v1"),
        ("sfspec/Pendulum-v1", "PendulumEnv", "Pendulum-v1"),
        ("sfspec/Acrobot-v1", "AcrobotEnv", "Acrobot-v1"),
        ("sfspec/MountainCarContinuous-v0", "MountainCarContinuousEnv", "MountainCarContinuous-v0"),
    ]
    tasks = [
        ("sfspec/Memory-v0", "MemoryEnv", memory_spaces),
        ("sfspec/PixelGoal-v0", "PixelGoalEnv", pixel_spaces),
        ("sfspec/Reach-v0", "ReachEnv", reach_spaces),
    ]
    def params(env_id: str) -> Mapping[str, float]:
        return PARAMETERS.get(env_id, NO_PARAMETERS)

    entries = [EnvEntry(i, f"sfspec.envs.classic:{c}", twin=t, parameters=params(i)) for i, c, t in classic]
    entries += [EnvEntry(i, f"sfspec.envs.tasks:{c}", spaces=s, parameters=params(i)) for i, c, s in tasks]
    return {e.env_id: e for e in entries}


_CATALOGUE: dict[str, EnvEntry] = _bundled()  # a registry, like the layer registry
BUNDLED_IDS = tuple(sorted(_CATALOGUE))


def tensor_env_ids() -> list[str]:
    """Ids of every tensor environment: bundled and registered by plugins."""
    return sorted(_CATALOGUE)


def is_tensor_env(env_id: str) -> bool:
    """Whether ``env_id`` names a tensor environment (whatever its namespace)."""
    return env_id in _CATALOGUE


def entry(env_id: str) -> EnvEntry:
    """The catalogue entry of a tensor environment (KeyError if there is none)."""
    return _CATALOGUE[env_id]


def gymnasium_twins() -> dict[str, str]:
    """Bundled tensor env id -> the gymnasium id it reproduces."""
    return {e.env_id: e.twin for e in _CATALOGUE.values() if e.twin}


def env_parameters(env_id: str) -> dict[str, float]:
    """The parameters ``env.randomize`` may draw for ``env_id``, with nominal values (bundled: without torch)."""
    found = _CATALOGUE[env_id]
    if found.cls is not None:  # a plugin's class declares its own
        return dict(getattr(found.cls, "parameters", {}))
    return dict(found.parameters)


def add(env_entry: EnvEntry) -> None:
    """Add or replace an entry (``register_tensor_env`` checks the class first)."""
    _CATALOGUE[env_entry.env_id] = env_entry


def remove(env_id: str) -> None:
    """Forget a registered environment."""
    _CATALOGUE.pop(env_id, None)


def episode_limit(env_id: str) -> int | None:
    """A tensor env's default time limit in steps (bundled: without torch; None: no limit)."""
    found = _CATALOGUE[env_id]
    if found.cls is None and env_id in EPISODE_LIMITS:
        return EPISODE_LIMITS[env_id]
    return int(env_class(env_id).default_max_episode_steps) or None


def env_class(env_id: str) -> type:
    """The class of a tensor environment (imports a bundled env's module, and so torch)."""
    found = _CATALOGUE[env_id]
    if found.cls is not None:
        return found.cls
    module, name = found.location.split(":")
    return getattr(importlib.import_module(module), name)


def env_spaces(env_id: str, kwargs: dict) -> Spaces:
    """(observation space, action space) of one environment built with ``kwargs``.

    Bundled envs answer without torch; a plugin's env is built once, with one copy, to ask it.
    """
    found = _CATALOGUE[env_id]
    if found.twin is not None:
        import gymnasium as gym

        env = gym.make(found.twin)
        try:
            return env.observation_space, env.action_space
        finally:
            env.close()
    if found.spaces is not None:
        accepted = inspect.signature(found.spaces).parameters
        return found.spaces(**{k: v for k, v in kwargs.items() if k in accepted})
    env = env_class(env_id)(1, **kwargs)
    try:
        return env.single_observation_space, env.single_action_space
    finally:
        env.close()
