"""Check a validated model spec against the environment's spaces and plan its stacks (torch-free).

``plan_model`` resolves what each stack observes and is made of, checks every option that
depends on the spaces, and runs shape inference through every layer, so ``sfspec validate``
reports shape errors without building a module. ``walk_stack`` is shared with the builder:
with ``build=True`` it also makes the modules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from sfspec.compiler import layers as _builtin_layers  # noqa: F401 (registers the built-in layers)
from sfspec.compiler.budget import layer_count_issues
from sfspec.compiler.shapes import ShapeError, build_layer, format_shape, infer_layer, parse_layer_item
from sfspec.compiler.spaces import ActionLayout, ObsInput, SpaceError, action_layout, describe_space, observation_inputs
from sfspec.errors import SpecError, SpecIssue, did_you_mean
from sfspec.spec.loader import SourceMap

MODEL = ("model",)


@dataclass(frozen=True)
class StackPlan:
    """One encoder -> core -> decoder stack: what it observes and where its parts are in the spec."""

    name: str  # actor | critic | shared
    observe: tuple[str, ...]
    encoder: Any
    core: Any
    decoder: Any
    paths: dict  # part -> spec path it came from


@dataclass
class ModelPlan:
    """Everything the builder needs, checked against the spaces."""

    model: dict  # the model section, as written
    inputs: dict[str, ObsInput]
    action: ActionLayout
    stacks: list[StackPlan]  # one when weights are shared, else actor then critic
    shared: bool
    mask_key: str | None
    normalize_keys: tuple[str, ...]
    normalize_clip: float
    normalize_epsilon: float
    std: dict
    bounds: str
    init: dict
    obs_space: Any = None
    action_space: Any = None
    custom_model: str | None = None
    shapes: dict = field(default_factory=dict)  # stack name -> output shape of each part


@dataclass
class Row:
    """One layer of a built or planned stack, for summaries."""

    path: str
    layer: str
    out_shape: tuple | None
    module: Any = None


def _issue(smap: SourceMap, path: tuple, message: str, key: bool = False) -> SpecIssue:
    return SpecIssue(smap.locate(path, key=key), path, message)


def plan_model(spec: dict, obs_space: Any, action_space: Any, smap: SourceMap, env_name: str = "the env") -> ModelPlan:
    """Check the model section against the spaces; raise a SpecError listing every problem."""
    model = spec.get("model", {})
    too_many = layer_count_issues(spec, smap)  # before any walk expands a repeat
    if too_many:
        raise SpecError(too_many)
    issues: list[SpecIssue] = []
    try:
        inputs = observation_inputs(obs_space, model.get("preprocess"))
    except SpaceError as exc:
        message = f"{exc} ({env_name} observes {describe_space(obs_space)})"
        raise SpecError(_issue(smap, MODEL + ("preprocess",), message)) from None
    try:
        layout = action_layout(action_space)
    except SpaceError as exc:
        raise SpecError(_issue(smap, ("env", "id"), str(exc))) from None

    action = model.get("action", {})
    mask_key = action.get("mask")
    issues += _check_action_options(action, layout, inputs, smap, env_name)
    observable = [k for k in inputs if k != mask_key]

    normalize = model.get("normalize_obs", False)
    norm_cfg = normalize if isinstance(normalize, dict) else {}
    norm_keys: tuple[str, ...] = ()
    if normalize:
        wanted = norm_cfg.get("keys")
        for i, key in enumerate(wanted or []):
            if key not in inputs:
                issues.append(_issue(smap, MODEL + ("normalize_obs", "keys", i), _no_key(key, inputs, env_name)))
        norm_keys = tuple(k for k in (wanted or observable) if k in inputs and inputs[k].normalizable)

    stacks, stack_issues = _resolve_stacks(model, observable, inputs, smap, env_name)
    issues += stack_issues
    plan = ModelPlan(
        model=model,
        inputs=inputs,
        action=layout,
        stacks=stacks,
        shared=bool(model.get("share_weights", False)),
        mask_key=mask_key,
        normalize_keys=norm_keys,
        normalize_clip=float(norm_cfg.get("clip", 5.0)),
        normalize_epsilon=float(norm_cfg.get("epsilon", 1e-8)),
        std=action.get("std", {}),
        bounds=action.get("bounds", "clip"),
        init=model.get("init", {}),
        obs_space=obs_space,
        action_space=action_space,
        custom_model=model.get("custom"),
    )
    if not issues and plan.custom_model is None:
        shape_issues: dict[tuple, SpecIssue] = {}
        for stack in stacks:
            try:
                result = walk_stack(stack, inputs, build=False)
                plan.shapes[stack.name] = result.part_shapes
            except ShapeError as exc:
                # actor and critic share spec parts: a layer failing in both (maybe on other shapes) is one error
                shape_issues.setdefault(exc.path, _issue(smap, exc.path, exc.message))
        issues += shape_issues.values()
    if issues:
        raise SpecError(list({(i.path, i.message): i for i in issues}.values()))
    return plan


def _no_key(key: str, inputs: dict, env_name: str) -> str:
    return f"no observation key '{key}'{did_you_mean(key, inputs)}; {env_name} observes: {', '.join(inputs)}"


def _check_action_options(action: dict, layout: ActionLayout, inputs: dict, smap: SourceMap, env_name: str) -> list:
    issues = []
    has_box = any(p.kind == "gaussian" for p in layout.parts)
    space = describe_space(layout.space)
    for option in ("std", "bounds"):
        if option in action and not has_box:
            issues.append(
                _issue(
                    smap,
                    MODEL + ("action", option),
                    f"'{option}' applies to Box actions; {env_name}'s action space is {space}",
                    key=True,
                )
            )
    if action.get("bounds") == "tanh" and any(p.kind == "gaussian" and not p.bounded for p in layout.parts):
        issues.append(
            _issue(
                smap, MODEL + ("action", "bounds"), f"tanh needs finite bounds; {env_name}'s action space is {space}"
            )
        )
    mask_key = action.get("mask")
    if mask_key is not None:
        width = sum(sum(p.categories) for p in layout.parts if p.kind in ("categorical", "multi_categorical"))
        path = MODEL + ("action", "mask")
        if not width:
            issues.append(
                _issue(smap, path, f"action masks apply to discrete actions; {env_name}'s action space is {space}")
            )
        elif mask_key not in inputs:
            issues.append(_issue(smap, path, _no_key(mask_key, inputs, env_name)))
        elif math.prod(inputs[mask_key].raw_shape or (1,)) != width:
            issues.append(
                _issue(
                    smap,
                    path,
                    f"mask '{mask_key}' has shape {inputs[mask_key].raw_shape}, the actions need {width} values",
                )
            )
    return issues


def _resolve_stacks(model: dict, observable: list, inputs: dict, smap: SourceMap, env_name: str) -> tuple[list, list]:
    issues: list[SpecIssue] = []
    sides = {}
    bad_observe = set()  # sides with a wrong observe: the root cause, so say nothing about what follows from it
    for side in ("actor", "critic"):
        sides[side], side_issues = _side_stack(side, model, observable, inputs, smap, env_name)
        if side_issues:
            bad_observe.add(side)
        issues += side_issues
    if model.get("share_weights", False):
        actor = sides["actor"]
        issues += _shared_issues(model, actor, sides["critic"], smap, check_observe=not bad_observe)
        stacks = [StackPlan("shared", actor.observe, actor.encoder, actor.core, actor.decoder, actor.paths)]
    else:
        stacks = [sides["actor"], sides["critic"]]
    for stack in stacks:
        encoder = stack.encoder
        if isinstance(encoder, dict) and "inputs" in encoder:
            for key in encoder["inputs"]:
                path = stack.paths["encoder"] + ("inputs", key)
                if key not in inputs:
                    issues.append(_issue(smap, path, _no_key(key, inputs, env_name), key=True))
                elif key not in stack.observe and _owner(stack.name) not in bad_observe:
                    message = f"the {stack.name} does not observe '{key}' (observes {list(stack.observe)})"
                    issues.append(_issue(smap, path, message, key=True))
    return stacks, issues


def _side_stack(
    side: str, model: dict, observable: list, inputs: dict, smap: SourceMap, env_name: str
) -> tuple[StackPlan, list[SpecIssue]]:
    """The actor's or the critic's stack, and the problems with what it observes."""
    issues = []
    cfg = model.get(side, {})
    observe = cfg.get("observe", observable)
    for i, key in enumerate(cfg.get("observe", [])):
        if key not in inputs:
            issues.append(_issue(smap, MODEL + (side, "observe", i), _no_key(key, inputs, env_name)))
        elif key == model.get("action", {}).get("mask"):
            issues.append(_issue(smap, MODEL + (side, "observe", i), f"'{key}' is the action mask, not an input"))
    if not observe:
        issues.append(_issue(smap, MODEL + (side, "observe"), "observes nothing"))
    parts, paths = {}, {}
    for part in ("encoder", "core", "decoder"):
        paths[part] = MODEL + (side, part) if part in cfg else MODEL + (part,)
        parts[part] = cfg.get(part, model.get(part, []))
    return StackPlan(side, tuple(k for k in observe if k in inputs), paths=paths, **parts), issues


def _shared_issues(
    model: dict, actor: StackPlan, critic: StackPlan, smap: SourceMap, check_observe: bool
) -> list[SpecIssue]:
    """What contradicts ``share_weights: true``: two sets of observations, or a side with its own parts."""
    issues = []
    path = MODEL + ("share_weights",)
    if check_observe and set(actor.observe) != set(critic.observe):
        message = (
            "shared weights need one set of observations; "
            f"actor observes {list(actor.observe)}, critic {list(critic.observe)}"
        )
        issues.append(_issue(smap, path, message))
    overridden = [
        f"{s}.{p}" for s in ("actor", "critic") for p in ("encoder", "core", "decoder") if p in model.get(s, {})
    ]
    if overridden:
        issues.append(_issue(smap, path, f"shared weights mean one stack, but model.{overridden[0]} defines its own"))
    return issues


def _owner(stack_name: str) -> str:
    """The side whose observe list a stack uses (a shared stack uses the actor's)."""
    return "actor" if stack_name == "shared" else stack_name


# ---------------------------------------------------------------- the walk shared by planning and building


@dataclass
class StackResult:
    """Output of walking one stack: modules (when built), rows and shapes."""

    encoder: Any = None
    core_items: list = field(default_factory=list)  # (module, builder) per core layer, when built
    decoder: Any = None
    branches: dict = field(default_factory=dict)  # observation key -> module (branched encoders)
    trunk: Any = None  # layers after the branches' concatenation
    rows: list[Row] = field(default_factory=list)
    part_shapes: dict = field(default_factory=dict)


def _is_custom(part: Any) -> bool:
    return isinstance(part, dict) and "custom" in part


def _walk_list(items: list, shape: tuple | None, path: tuple, section: str, build: bool, rows: list, label: str):
    """Infer (and build) a layer list; returns (modules, shape)."""
    modules = []
    for i, item in enumerate(items):
        if shape is None:
            return modules, None
        name, _ = parse_layer_item(item)
        if build:
            module, shape, builder = build_layer(item, shape, path + (i,), section)
            modules.append((module, builder))
        else:
            shape = infer_layer(item, shape, path + (i,), section)
            module = None
        rows.append(Row(f"{label}[{i}]", name, shape, module))
    return modules, shape


def _flat_size(shape: tuple) -> int:
    return math.prod(shape)


def walk_stack(stack: StackPlan, inputs: dict[str, ObsInput], build: bool) -> StackResult:
    """Shape-check one stack; with ``build`` also make its modules (imports torch)."""
    result = StackResult()
    label = stack.name
    enc = stack.encoder
    enc_path = stack.paths["encoder"]
    if _is_custom(enc):
        shape = _custom_component("encoder", enc, inputs, stack, result, build)
    elif isinstance(enc, list):
        if len(stack.observe) == 1:
            shape = inputs[stack.observe[0]].shape
        else:
            shape = (sum(_flat_size(inputs[k].shape) for k in stack.observe),)
        mods, shape = _walk_list(enc, shape, enc_path, "encoder", build, result.rows, f"{label}.encoder")
        result.trunk = mods
    else:
        total: int | None = 0
        for key in stack.observe:
            items = enc.get("inputs", {}).get(key)
            if items is None:
                out = inputs[key].shape
            else:
                mods, out = _walk_list(
                    items,
                    inputs[key].shape,
                    enc_path + ("inputs", key),
                    "encoder",
                    build,
                    result.rows,
                    f"{label}.encoder.inputs.{key}",
                )
                result.branches[key] = mods
            total = None if out is None or total is None else total + _flat_size(out)
        shape = (total,) if total is not None else None
        mods, shape = _walk_list(
            enc.get("layers", []),
            shape,
            enc_path + ("layers",),
            "encoder",
            build,
            result.rows,
            f"{label}.encoder.layers",
        )
        result.trunk = mods
    _need_vector(shape, enc_path, "encoder")
    result.part_shapes["encoder"] = shape

    core = stack.core
    if _is_custom(core):
        shape = _custom_component("core", core, shape, stack, result, build)
    else:
        result.core_items, shape = _walk_list(
            core, shape, stack.paths["core"], "core", build, result.rows, f"{label}.core"
        )
    _need_vector(shape, stack.paths["core"], "core")
    result.part_shapes["core"] = shape

    dec = stack.decoder
    if _is_custom(dec):
        shape = _custom_component("decoder", dec, shape, stack, result, build)
    else:
        mods, shape = _walk_list(dec, shape, stack.paths["decoder"], "decoder", build, result.rows, f"{label}.decoder")
        result.decoder = mods
    _need_vector(shape, stack.paths["decoder"], "decoder")
    result.part_shapes["decoder"] = shape
    return result


def _need_vector(shape: tuple | None, path: tuple, part: str) -> None:
    if shape is not None and len(shape) != 1:
        raise ShapeError(
            path,
            f"the {part} must end in a vector, but its output has shape {format_shape(shape)}: end it with '- flatten'",
        )


def _custom_component(
    section: str, cfg: dict, inputs_or_shape: Any, stack: StackPlan, result: StackResult, build: bool
):
    """Instantiate a registered component (only when building: its sizes are known only then)."""
    if not build:
        return None
    from sfspec.compiler.build import make_custom_component

    module, out_size = make_custom_component(section, cfg, inputs_or_shape, stack)
    setattr(result, section if section != "core" else "core_items", module if section != "core" else [(module, None)])
    result.rows.append(Row(f"{stack.name}.{section}", f"custom:{cfg['custom']}", (out_size,), module))
    return (out_size,)
