"""``interface:`` checked against the environment's spaces: every problem at its ``file:line:col``."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sfspec.compiler.interface_config import LAST_ACTION, InterfaceConfig, ObservationInterface, Transform
from sfspec.errors import SpecError, SpecIssue, did_you_mean
from sfspec.sourcemap import SourceMap


def check_interface(spec: dict, obs_space: Any, action_space: Any, smap: SourceMap) -> InterfaceConfig | None:
    """The spec's interface checked against the env's spaces (SpecError listing every problem), or None."""
    from sfspec.compiler.spaces import flatten_space

    cfg = InterfaceConfig.from_spec(spec)
    if cfg is None:
        return None
    leaves = flatten_space(obs_space)
    issues = [i for key, o in cfg.observations.items() for i in _observation_issues(key, o, leaves, smap)]
    if cfg.last_action and LAST_ACTION in leaves:
        path = ("interface", "last_action")
        message = (
            f"the environment already has an observation '{LAST_ACTION}'; the previous action cannot take its name"
        )
        issues.append(SpecIssue(smap.locate(path), path, message))
    if (cfg.last_action or cfg.actions is not None) and not _is_float_box(action_space):
        which = ("interface", "actions") if cfg.actions is not None else ("interface", "last_action")
        message = f"the action space is {_describe(action_space)}: scaled and previous actions need a Box action space"
        issues.append(SpecIssue(smap.locate(which, key=True), which, message))
    elif cfg.actions is not None:
        issues += _action_issues(cfg.actions, action_space, smap)
    issues += _observe_issues(spec, cfg, smap)
    if issues:
        raise SpecError(issues)
    return cfg


def _is_float_box(space: Any) -> bool:
    from gymnasium import spaces

    return isinstance(space, spaces.Box) and np.issubdtype(space.dtype, np.floating)


def _describe(space: Any) -> str:
    from sfspec.compiler.spaces import describe_space

    return describe_space(space)


def _observation_issues(key: str, entry: ObservationInterface, leaves: dict, smap: SourceMap) -> list[SpecIssue]:
    """What is wrong with ``interface.observations.KEY``."""
    path = ("interface", "observations", key)
    if key not in leaves:
        message = f"no observation input '{key}'{did_you_mean(key, leaves)}; the inputs: {', '.join(leaves)}"
        return [SpecIssue(smap.locate(path, key=True), path, message)]
    leaf = leaves[key]
    if not _is_float_box(leaf):
        message = f"'{key}' is {_describe(leaf)}: scaling and history apply to float (Box) inputs only"
        return [SpecIssue(smap.locate(path, key=True), path, message)]
    if entry.history > 1 and len(leaf.shape) > 1:
        message = f"history stacks vector inputs; '{key}' has shape {tuple(leaf.shape)}"
        return [SpecIssue(smap.locate((*path, "history")), (*path, "history"), message)]
    return _transform_issues(path, entry, int(np.prod(leaf.shape)), f"'{key}' of shape {tuple(leaf.shape)}", smap)


def _action_issues(actions: Transform, space: Any, smap: SourceMap) -> list[SpecIssue]:
    path = ("interface", "actions")
    size = int(np.prod(space.shape))
    return _transform_issues(path, actions, size, f"the action of shape {tuple(space.shape)}", smap)


def _transform_issues(path: tuple, t: Transform, size: int, what: str, smap: SourceMap) -> list[SpecIssue]:
    """Lengths that fit ``size`` components, then finite values, a scale without zeros and ordered clip bounds."""
    per_component = (1, size)
    fields = [(("scale",), t.scale, per_component), (("offset",), t.offset, per_component)]
    fields += [(("names",), t.names, (size,))] if t.names else []
    fields += [(("clip", 0), t.clip[0], per_component), (("clip", 1), t.clip[1], per_component)] if t.clip else []
    issues = []
    for suffix, values, allowed in fields:
        if len(values) not in allowed:
            counts = str(size) if allowed == (size,) else f"one number, or {size} (one per component)"
            where = (*path, *suffix)
            issues.append(SpecIssue(smap.locate(where), where, f"{len(values)} values for {what}: give {counts}"))
    if issues:
        return issues
    for name, values in (("scale", t.scale), ("offset", t.offset)):
        if not all(map(math.isfinite, values)) or (name == "scale" and 0 in values):
            where = (*path, name)
            return [SpecIssue(smap.locate(where), where, "expected finite numbers, and a scale without zeros")]
    if t.clip is not None and (np.broadcast_to(t.clip[0], (size,)) > np.broadcast_to(t.clip[1], (size,))).any():
        where = (*path, "clip")
        message = f"reversed clip bounds: low must not exceed high (low {list(t.clip[0])}, high {list(t.clip[1])})"
        return [SpecIssue(smap.locate(where), where, message)]
    return []


def _observe_issues(spec: dict, cfg: InterfaceConfig, smap: SourceMap) -> list[SpecIssue]:
    """``last_action: true`` that no part of the model reads is a mistake, not a wish."""
    if not cfg.last_action:
        return []
    model = spec.get("model") or {}
    lists = [(side, (model.get(side) or {}).get("observe")) for side in ("actor", "critic")]
    given = [(side, keys) for side, keys in lists if keys is not None]
    if given and all(LAST_ACTION not in keys for _, keys in given):
        side = given[0][0]
        path = ("model", side, "observe")
        message = f"interface.last_action is on, but no observe list names '{LAST_ACTION}': add it where it is read"
        return [SpecIssue(smap.locate(path), path, message)]
    return []
