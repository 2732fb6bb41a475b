"""The ``interface:`` section's schema fragment, its typed config and the network's spaces (torch-free).

What lies between the network and a robot, declared once. Observations arrive in robot units and
reach the network as ``clip((x - offset) * scale, low, high)``, optionally stacked with their last
``history - 1`` frames (oldest first, flattened); the previous action can be an extra input
(``last_action``); the network acts in its own units and the robot receives
``clip(offset + scale * action, low, high)``. Training runs through the same transform
(``sfspec.runtime.interface``) that every exported artifact holds (``sfspec.compiler.interface``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

LAST_ACTION = "last_action"  # the input holding the previous action, in the network's units

_NUMBERS = {
    "anyOf": [
        {"type": "number"},
        {"type": "array", "items": {"type": "number"}, "minItems": 1},
    ],
    "description": "one number for every component, or one per component (flattened)",
}
_CLIP = {
    "type": "array",
    "items": _NUMBERS,
    "minItems": 2,
    "maxItems": 2,
    "description": "[low, high]: each one number, or one per component",
}
_NAMES = {"type": "array", "items": {"type": "string"}, "description": "a name per component (joint names, ...)"}

OBSERVATION_PARAMS: dict[str, dict] = {
    "scale": {**_NUMBERS, "default": 1.0, "description": "network value = (robot value - offset) * scale"},
    "offset": {**_NUMBERS, "default": 0.0, "description": "subtracted before scaling (a default pose, a bias)"},
    "clip": {**_CLIP, "description": "[low, high] in network units, after scaling"},
    "history": {
        "type": "integer",
        "minimum": 1,
        "default": 1,
        "description": "the last H frames, oldest first, flattened; at an episode's start all H are its first frame",
    },
    "names": _NAMES,
}

ACTION_PARAMS: dict[str, dict] = {
    "scale": {**_NUMBERS, "default": 1.0, "description": "robot value = offset + scale * network action"},
    "offset": {**_NUMBERS, "default": 0.0, "description": "the robot value of a zero action: the default pose"},
    "clip": {**_CLIP, "description": "[low, high] in robot units (the default: the env's action bounds)"},
    "names": _NAMES,
}

INTERFACE_PARAMS: dict[str, dict] = {
    "observations": {
        "type": "object",
        "description": "per observation input: robot units to network units, history, component names",
        "additionalProperties": {
            "type": "object",
            "properties": OBSERVATION_PARAMS,
            "additionalProperties": False,
        },
    },
    "last_action": {
        "type": "boolean",
        "default": False,
        "description": f"the previous action (network units, zero at an episode's start) as the input '{LAST_ACTION}'",
    },
    "actions": {
        "type": "object",
        "properties": ACTION_PARAMS,
        "additionalProperties": False,
        "description": "network units to robot units",
    },
    "dt": {"type": "number", "exclusiveMinimum": 0, "description": "control period in seconds (metadata)"},
}


@dataclass(frozen=True)
class Transform:
    """An affine map with an optional clip, per component (tuples of length 1 broadcast)."""

    scale: tuple[float, ...]
    offset: tuple[float, ...]
    clip: tuple[tuple[float, ...], tuple[float, ...]] | None
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class ObservationInterface(Transform):
    """One observation input: its transform to network units and its history length."""

    history: int = 1


@dataclass(frozen=True)
class InterfaceConfig:
    """The ``interface:`` section, resolved with the schema's defaults."""

    observations: dict[str, ObservationInterface]
    last_action: bool
    actions: Transform | None
    dt: float | None

    @classmethod
    def from_spec(cls, spec: dict) -> InterfaceConfig | None:
        """The spec's interface, or None when it has no ``interface:`` section."""
        section = spec.get("interface")
        if not section:
            return None
        observations = {
            key: ObservationInterface(**_transform(entry, OBSERVATION_PARAMS), history=_history(entry))
            for key, entry in (section.get("observations") or {}).items()
        }
        actions = section.get("actions")
        return cls(
            observations=observations,
            last_action=bool(section.get("last_action", INTERFACE_PARAMS["last_action"]["default"])),
            actions=Transform(**_transform(actions, ACTION_PARAMS)) if actions is not None else None,
            dt=float(section["dt"]) if "dt" in section else None,
        )

    @property
    def histories(self) -> dict[str, int]:
        """Inputs stacked over more than one frame, with their length."""
        return {k: o.history for k, o in self.observations.items() if o.history > 1}


def _numbers(value: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in value) if isinstance(value, (list, tuple)) else (float(value),)


def _history(entry: dict) -> int:
    return int(entry.get("history", OBSERVATION_PARAMS["history"]["default"]))


def _transform(entry: dict, params: dict) -> dict:
    clip = entry.get("clip")
    return {
        "scale": _numbers(entry.get("scale", params["scale"]["default"])),
        "offset": _numbers(entry.get("offset", params["offset"]["default"])),
        "clip": (_numbers(clip[0]), _numbers(clip[1])) if clip is not None else None,
        "names": tuple(entry.get("names", ())),
    }


# ----------------------------------------------------------------------------- the policy's spaces


def _broadcast(values: tuple[float, ...], size: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(values, dtype=np.float64), (size,))


def _action_bounds(t: Transform, space: Any) -> tuple[np.ndarray, np.ndarray]:
    """The robot-unit bounds of the action: ``clip``, else the env's action space bounds (flat)."""
    size = int(np.prod(space.shape))
    if t.clip is not None:
        return _broadcast(t.clip[0], size).copy(), _broadcast(t.clip[1], size).copy()
    return np.asarray(space.low, dtype=np.float64).ravel(), np.asarray(space.high, dtype=np.float64).ravel()


def network_action_bounds(t: Transform, space: Any) -> tuple[np.ndarray, np.ndarray]:
    """The action bounds in network units: the robot bounds mapped through the inverse of ``offset + scale * a``."""
    low, high = _action_bounds(t, space)
    size = low.size
    scale, offset = _broadcast(t.scale, size), _broadcast(t.offset, size)
    with np.errstate(invalid="ignore"):
        a, b = (low - offset) / scale, (high - offset) / scale
    return np.minimum(a, b), np.maximum(a, b)


def _observation_bounds(entry: ObservationInterface, leaf: Any) -> tuple[np.ndarray, np.ndarray]:
    """One frame's bounds in network units."""
    size = int(np.prod(leaf.shape))
    if entry.clip is not None:
        return _broadcast(entry.clip[0], size), _broadcast(entry.clip[1], size)
    scale, offset = _broadcast(entry.scale, size), _broadcast(entry.offset, size)
    low = np.asarray(leaf.low, dtype=np.float64).ravel()
    high = np.asarray(leaf.high, dtype=np.float64).ravel()
    with np.errstate(invalid="ignore"):
        a, b = (low - offset) * scale, (high - offset) * scale
    return np.nan_to_num(np.minimum(a, b), nan=-np.inf), np.nan_to_num(np.maximum(a, b), nan=np.inf)


def _float32(values: np.ndarray) -> np.ndarray:
    """Bounds as float32: beyond its range is unbounded (a huge raw bound times a scale)."""
    limit = np.finfo(np.float32).max
    return np.where(np.abs(values) > limit, np.sign(values) * np.inf, values).astype(np.float32)


def policy_spaces(cfg: InterfaceConfig | None, obs_space: Any, action_space: Any) -> tuple[Any, Any]:
    """The (observation, action) spaces the network sees: network units, histories stacked, the last action added."""
    from gymnasium import spaces

    from sfspec.compiler.spaces import OBS_KEY, flatten_space

    if cfg is None:
        return obs_space, action_space
    if cfg.actions is not None:
        low, high = network_action_bounds(cfg.actions, action_space)
        shape = action_space.shape
        action_space = spaces.Box(_float32(low).reshape(shape), _float32(high).reshape(shape), dtype=np.float32)
    leaves = dict(flatten_space(obs_space))
    for key, entry in cfg.observations.items():
        low, high = _observation_bounds(entry, leaves[key])
        shape = tuple(leaves[key].shape) if entry.history == 1 else (entry.history * low.size,)
        low, high = np.tile(low, entry.history), np.tile(high, entry.history)
        leaves[key] = spaces.Box(_float32(low).reshape(shape), _float32(high).reshape(shape), dtype=np.float32)
    if cfg.last_action:
        leaves[LAST_ACTION] = spaces.Box(action_space.low.ravel(), action_space.high.ravel(), dtype=np.float32)
    if list(leaves) == [OBS_KEY]:
        return leaves[OBS_KEY], action_space
    return spaces.Dict(leaves), action_space
