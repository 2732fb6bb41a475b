"""Gymnasium spaces to the model's inputs and action parts (torch-free).

Every observation becomes a flat dict of named inputs ('obs' for a plain space, 'camera' or
'robot.joints' for nested Dict/Tuple spaces); every action space becomes a list of parts that
share one flat float action tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gymnasium import spaces

from sfspec.compiler.config import PREPROCESS_PARAMS, option
from sfspec.errors import did_you_mean

OBS_KEY = "obs"  # the single input's name when the observation is not a Dict/Tuple


class SpaceError(Exception):
    """A space the compiler cannot use, or a preprocessing option it cannot apply."""


@dataclass(frozen=True)
class ObsInput:
    """One named observation input: its raw space and how it becomes network input."""

    key: str
    space: Any  # the leaf gymnasium space
    kind: str  # vector | image | tensor | discrete | multi_discrete | multi_binary
    shape: tuple  # network input shape, batch excluded
    raw_shape: tuple  # as the environment gives it
    channels_last: bool = False
    scale: float | None = None  # multiply raw values by this (uint8 images: 1/255)
    encoding: str = "one_hot"  # discrete kinds: one_hot | index
    categories: tuple = ()  # discrete kinds: number of values per dimension
    offset: tuple = ()  # discrete kinds: the space's start values

    @property
    def normalizable(self) -> bool:
        """Whether running mean/std normalisation applies (continuous, unscaled inputs)."""
        return self.kind in ("vector", "tensor") and self.scale is None


def flatten_space(space: Any, prefix: str = "") -> dict[str, Any]:
    """Leaf spaces of a (nested) Dict/Tuple space by dotted key; a plain space is 'obs'."""
    if isinstance(space, spaces.Dict):
        out: dict[str, Any] = {}
        for key, sub in space.spaces.items():
            out.update(flatten_space(sub, f"{prefix}{key}."))
        return out
    if isinstance(space, spaces.Tuple):
        out = {}
        for i, sub in enumerate(space.spaces):
            out.update(flatten_space(sub, f"{prefix}{i}."))
        return out
    return {prefix[:-1] if prefix else OBS_KEY: space}


def observation_inputs(space: Any, preprocess: dict | None = None) -> dict[str, ObsInput]:
    """The model's named inputs for an observation space, with ``model.preprocess`` applied."""
    preprocess = preprocess or {}
    leaves = flatten_space(space)
    unknown = [k for k in preprocess if k not in leaves]
    if unknown:
        raise SpaceError(
            f"no observation key '{unknown[0]}'{did_you_mean(unknown[0], leaves)}; keys: {', '.join(leaves)}"
        )
    return {key: _obs_input(key, leaf, preprocess.get(key, {})) for key, leaf in leaves.items()}


def _obs_input(key: str, space: Any, options: dict) -> ObsInput:
    encoding = option(PREPROCESS_PARAMS, options, "discrete")
    if isinstance(space, spaces.Box):
        return _box_input(key, space, options)
    if isinstance(space, spaces.Discrete):
        n = int(space.n)
        shape = (n,) if encoding == "one_hot" else (1,)
        return ObsInput(
            key, space, "discrete", shape, (), encoding=encoding, categories=(n,), offset=(int(space.start),)
        )
    if isinstance(space, spaces.MultiDiscrete):
        nvec = tuple(int(n) for n in np.asarray(space.nvec).ravel())
        start = tuple(int(s) for s in np.asarray(space.start).ravel())
        shape = (sum(nvec),) if encoding == "one_hot" else (len(nvec),)
        return ObsInput(
            key, space, "multi_discrete", shape, tuple(space.shape), encoding=encoding, categories=nvec, offset=start
        )
    if isinstance(space, spaces.MultiBinary):
        return ObsInput(key, space, "multi_binary", (int(np.prod(space.shape)),), tuple(space.shape))
    raise SpaceError(f"observation '{key}': {type(space).__name__} spaces are not supported")


def _box_input(key: str, space: spaces.Box, options: dict) -> ObsInput:
    shape = tuple(int(s) for s in space.shape)
    layout = option(PREPROCESS_PARAMS, options, "layout")
    scale = options.get("scale")
    is_uint8 = space.dtype == np.uint8
    if len(shape) == 3:
        channels_last = layout == "channels_last" or (
            layout == "auto" and shape[-1] in (1, 3, 4) and shape[0] not in (1, 3, 4)
        )
        if scale is None and is_uint8:
            scale = 1.0 / 255.0
        net_shape = (shape[2], shape[0], shape[1]) if channels_last else shape
        return ObsInput(key, space, "image", net_shape, shape, channels_last=channels_last, scale=scale)
    if layout != "auto":
        raise SpaceError(f"observation '{key}': layout applies to images (H, W, C) or (C, H, W), not shape {shape}")
    if len(shape) == 0:
        shape = (1,)
    kind = "vector" if len(shape) == 1 else "tensor"
    if scale is None and is_uint8:
        scale = 1.0 / 255.0
    return ObsInput(key, space, kind, shape, tuple(space.shape), scale=scale)


@dataclass(frozen=True)
class ActionPart:
    """One action distribution over a slice of the flat action tensor."""

    key: str | None  # None for a plain space; the Dict key or Tuple index otherwise
    space: Any
    kind: str  # categorical | multi_categorical | bernoulli | gaussian
    size: int  # width in the flat action tensor
    categories: tuple = ()  # categorical kinds: values per dimension
    offset: tuple = ()  # categorical kinds: the space's start values
    shape: tuple = ()  # the env action's shape
    low: tuple = ()  # gaussian: bounds, flattened
    high: tuple = ()

    @property
    def discrete(self) -> bool:
        """Whether the part picks among values (masks and argmax apply)."""
        return self.kind != "gaussian"

    @property
    def bounded(self) -> bool:
        """Whether a Box part has finite bounds on every dimension."""
        return all(math.isfinite(v) for v in self.low + self.high)


@dataclass(frozen=True)
class ActionLayout:
    """All parts of an action space and how they nest (plain, Tuple or Dict)."""

    space: Any
    parts: tuple[ActionPart, ...]
    container: str  # plain | tuple | dict
    keys: tuple = field(default=())

    @property
    def size(self) -> int:
        """Width of the flat action tensor."""
        return sum(p.size for p in self.parts)


def action_layout(space: Any) -> ActionLayout:
    """Split an action space into distribution parts (Tuple/Dict: one per element, not nested)."""
    if isinstance(space, spaces.Tuple):
        parts = tuple(_action_part(str(i), s) for i, s in enumerate(space.spaces))
        return ActionLayout(space, parts, "tuple", tuple(range(len(parts))))
    if isinstance(space, spaces.Dict):
        parts = tuple(_action_part(k, s) for k, s in space.spaces.items())
        return ActionLayout(space, parts, "dict", tuple(space.spaces))
    return ActionLayout(space, (_action_part(None, space),), "plain")


def _action_part(key: str | None, space: Any) -> ActionPart:
    where = f"action '{key}'" if key is not None else "action space"
    if isinstance(space, spaces.Discrete):
        return ActionPart(key, space, "categorical", 1, (int(space.n),), (int(space.start),))
    if isinstance(space, spaces.MultiDiscrete):
        if np.asarray(space.nvec).ndim != 1:
            raise SpaceError(f"{where}: MultiDiscrete with a {np.asarray(space.nvec).ndim}-D nvec is not supported")
        nvec = tuple(int(n) for n in space.nvec)
        return ActionPart(key, space, "multi_categorical", len(nvec), nvec, tuple(int(s) for s in space.start))
    if isinstance(space, spaces.MultiBinary):
        n = int(np.prod(space.shape))
        return ActionPart(key, space, "bernoulli", n, shape=tuple(space.shape))
    if isinstance(space, spaces.Box):
        low = tuple(float(v) for v in np.asarray(space.low, dtype=np.float64).ravel())
        high = tuple(float(v) for v in np.asarray(space.high, dtype=np.float64).ravel())
        return ActionPart(key, space, "gaussian", len(low), shape=tuple(space.shape), low=low, high=high)
    raise SpaceError(f"{where}: {type(space).__name__} is not supported (nested Tuple/Dict actions neither)")


def describe_space(space: Any) -> str:
    """A short description of a space for messages and summaries."""
    if isinstance(space, spaces.Box):
        return f"Box{tuple(space.shape)} {space.dtype}"
    if isinstance(space, spaces.Discrete):
        return f"Discrete({space.n})"
    if isinstance(space, spaces.MultiDiscrete):
        return f"MultiDiscrete({list(np.asarray(space.nvec).ravel())})"
    if isinstance(space, spaces.MultiBinary):
        return f"MultiBinary({space.n})"
    if isinstance(space, spaces.Dict):
        return "Dict(" + ", ".join(f"{k}: {describe_space(s)}" for k, s in space.spaces.items()) + ")"
    if isinstance(space, spaces.Tuple):
        return "Tuple(" + ", ".join(describe_space(s) for s in space.spaces) + ")"
    return type(space).__name__


def env_actions(flat: np.ndarray, layout: ActionLayout) -> Any:
    """Batched flat actions (N, layout.size), already in env units, as a vector env takes them."""
    columns = []
    start = 0
    for part in layout.parts:
        block = flat[:, start : start + part.size]
        start += part.size
        if part.kind == "categorical":
            columns.append(np.rint(block[:, 0]).astype(part.space.dtype))
        elif part.kind in ("multi_categorical", "bernoulli"):
            columns.append(np.rint(block).astype(part.space.dtype).reshape(len(block), *part.space.shape))
        else:
            columns.append(block.astype(part.space.dtype).reshape(len(block), *part.shape))
    if layout.container == "plain":
        return columns[0]
    if layout.container == "tuple":
        return tuple(columns)
    return dict(zip(layout.keys, columns))
