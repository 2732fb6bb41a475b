"""Check a validated model spec against the environment's spaces and plan its stacks (torch-free).

``plan_model`` resolves what each stack observes and is made of, checks every option that
depends on the spaces, and runs shape inference through every layer, so ``sfspec validate``
reports shape errors without building a module. The plan lists each stack's layers as resolved
nodes (layer, arguments, input and output shape, spec position); building only maps nodes to
modules (``sfspec.compiler.build``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from sfspec.compiler import layers as _builtin_layers  # noqa: F401 (registers the built-in layers)
from sfspec.compiler.config import ModelConfig
from sfspec.compiler.layer_count import layer_count_issues
from sfspec.compiler.registry import LAYERS
from sfspec.compiler.shapes import ShapeError, format_shape, infer_layer, parse_layer_item
from sfspec.compiler.spaces import ActionLayout, ObsInput, SpaceError, action_layout, describe_space, observation_inputs
from sfspec.errors import SpecError, SpecIssue, did_you_mean
from sfspec.sourcemap import SourceMap

if TYPE_CHECKING:
    from sfspec.compiler.interface_config import InterfaceConfig

MODEL = ("model",)
PARTS = ("encoder", "core", "decoder")


@dataclass(frozen=True)
class LayerNode:
    """One top-level layer of a stack, resolved: what to build, from what shape, and where it is written.

    ``in_shape`` and ``out_shape`` are None where only building can tell: after a custom component
    or a plugin layer without a shape rule (the builder then carries the built shapes on).
    """

    part: str  # encoder | core | decoder
    label: str  # its row in summaries: actor.encoder.inputs.camera[0]
    layer: str  # the layer's name, or custom:NAME for a registered component
    args: dict  # arguments with the defaults applied (a component: its params)
    path: tuple  # spec path: the source position is smap.locate(path)
    in_shape: tuple | None
    out_shape: tuple | None
    branch: str | None = None  # encoder branches: the observation key the layer belongs to
    custom: str | None = None  # a registered component's name
    recurrent: bool = False  # carries state (gru, lstm)


@dataclass(frozen=True)
class StackPlan:
    """One encoder -> core -> decoder stack: what it observes, its parts in the spec, and its nodes."""

    name: str  # actor | critic | shared
    observe: tuple[str, ...]
    encoder: Any
    core: Any
    decoder: Any
    paths: dict  # part -> spec path it came from
    nodes: tuple[LayerNode, ...] = ()  # filled by planning, in build order
    part_shapes: dict = field(default_factory=dict)  # part -> output shape (None: known once built)

    @property
    def encoder_kind(self) -> str:
        """custom | list (one layer list) | branched (per-input lists, then shared layers)."""
        if _is_custom(self.encoder):
            return "custom"
        return "list" if isinstance(self.encoder, list) else "branched"

    @property
    def branch_keys(self) -> tuple[str, ...]:
        """Observed inputs with a branch of their own (an empty list counts: it is an identity)."""
        if self.encoder_kind != "branched":
            return ()
        return tuple(k for k in self.observe if k in self.encoder.get("inputs", {}))

    def part_nodes(self, part: str, branch: str | None = None) -> list[LayerNode]:
        """The nodes of one part (for the encoder: of one branch, or of the shared layers)."""
        return [n for n in self.nodes if n.part == part and (part != "encoder" or n.branch == branch)]


@dataclass
class ModelPlan:
    """Everything the builder needs, checked against the spaces."""

    model: dict  # the model section, as written
    inputs: dict[str, ObsInput]
    action: ActionLayout
    stacks: list[StackPlan]  # one when weights are shared, else actor then critic; with their nodes
    shared: bool
    mask_key: str | None
    normalize_keys: tuple[str, ...]
    config: ModelConfig  # the scalar options, with the schema's defaults
    obs_space: Any = None
    action_space: Any = None
    custom_model: str | None = None
    # The robot interface (spec, the env's own spaces) when the spec has one; obs_space and
    # action_space above are then the network's (sfspec.spec.interface.policy_spaces).
    interface: tuple[InterfaceConfig, Any, Any] | None = None


def _issue(smap: SourceMap, path: tuple, message: str, key: bool = False) -> SpecIssue:
    return SpecIssue(smap.locate(path, key=key), path, message)


def plan_model(spec: dict, obs_space: Any, action_space: Any, smap: SourceMap, env_name: str = "the env") -> ModelPlan:
    """Check the model section against the spaces; raise a SpecError listing every problem."""
    model = spec.get("model", {})
    too_many = layer_count_issues(spec, smap)  # before any walk expands a repeat
    if too_many:
        raise SpecError(too_many)
    inputs, layout = _spaces(model, obs_space, action_space, smap, env_name)
    config = ModelConfig.from_spec(model)
    issues = _check_action_options(model.get("action", {}), layout, inputs, smap, env_name)
    observable = [k for k in inputs if k != config.mask]
    norm_keys, norm_issues = _normalize_keys(model, config, inputs, observable, smap, env_name)
    stacks, stack_issues = _resolve_stacks(model, config.share_weights, observable, inputs, smap, env_name)
    issues += norm_issues + stack_issues
    custom_model = model.get("custom")
    if not issues and custom_model is None:
        stacks, shape_issues = _plan_stacks(stacks, inputs, smap)
        issues += shape_issues
    if issues:
        raise SpecError(list({(i.path, i.message): i for i in issues}.values()))
    return ModelPlan(
        model=model,
        inputs=inputs,
        action=layout,
        stacks=stacks,
        shared=config.share_weights,
        mask_key=config.mask,
        normalize_keys=norm_keys,
        config=config,
        obs_space=obs_space,
        action_space=action_space,
        custom_model=custom_model,
    )


def _spaces(model: dict, obs_space: Any, action_space: Any, smap: SourceMap, env_name: str) -> tuple:
    """The model's named inputs and action layout, or a SpecError saying why the spaces do not fit."""
    try:
        inputs = observation_inputs(obs_space, model.get("preprocess"))
    except SpaceError as exc:
        message = f"{exc} ({env_name} observes {describe_space(obs_space)})"
        raise SpecError(_issue(smap, MODEL + ("preprocess",), message)) from None
    try:
        layout = action_layout(action_space)
    except SpaceError as exc:
        raise SpecError(_issue(smap, ("env", "id"), str(exc))) from None
    return inputs, layout


def _normalize_keys(
    model: dict, config: ModelConfig, inputs: dict, observable: list, smap: SourceMap, env_name: str
) -> tuple[tuple[str, ...], list[SpecIssue]]:
    """The inputs the running normaliser applies to, and the problems with the keys the spec names."""
    if not config.normalize:
        return (), []
    normalize = model.get("normalize_obs")
    wanted = normalize.get("keys") if isinstance(normalize, dict) else None
    issues = [
        _issue(smap, MODEL + ("normalize_obs", "keys", i), _no_key(key, inputs, env_name))
        for i, key in enumerate(wanted or [])
        if key not in inputs
    ]
    return tuple(k for k in (wanted or observable) if k in inputs and inputs[k].normalizable), issues


def _plan_stacks(stacks: list[StackPlan], inputs: dict, smap: SourceMap) -> tuple[list[StackPlan], list[SpecIssue]]:
    """Each stack with its nodes, or the shape problems found on the way."""
    planned, shape_issues = [], {}
    for stack in stacks:
        try:
            planned.append(plan_stack(stack, inputs))
        except ShapeError as exc:
            # actor and critic share spec parts: a layer failing in both (maybe on other shapes) is one error
            shape_issues.setdefault(exc.path, _issue(smap, exc.path, exc.message))
    return planned, list(shape_issues.values())


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


def _resolve_stacks(
    model: dict, shared: bool, observable: list, inputs: dict, smap: SourceMap, env_name: str
) -> tuple[list, list]:
    issues: list[SpecIssue] = []
    sides = {}
    bad_observe = set()  # sides with a wrong observe: the root cause, so say nothing about what follows from it
    for side in ("actor", "critic"):
        sides[side], side_issues = _side_stack(side, model, observable, inputs, smap, env_name)
        if side_issues:
            bad_observe.add(side)
        issues += side_issues
    if shared:
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


# ---------------------------------------------------------------- the nodes of a stack (shape inference)


def _is_custom(part: Any) -> bool:
    return isinstance(part, dict) and "custom" in part


def encoder_input_shape(observe: tuple[str, ...], inputs: dict[str, ObsInput]) -> tuple:
    """What a plain encoder layer list takes: the one input as it is, or every input flattened and joined."""
    if len(observe) == 1:
        return inputs[observe[0]].shape
    return concat_shape([inputs[k].shape for k in observe])


def concat_shape(shapes: list[tuple | None]) -> tuple | None:
    """The shape of flattened inputs joined on the feature axis (None if one is not known)."""
    if any(s is None for s in shapes):
        return None
    return (sum(math.prod(s) for s in shapes),)


def need_vector(shape: tuple | None, path: tuple, part: str) -> None:
    """Raise ShapeError unless a part's output is a vector (or not known yet)."""
    if shape is not None and len(shape) != 1:
        raise ShapeError(
            path,
            f"the {part} must end in a vector, but its output has shape {format_shape(shape)}: end it with '- flatten'",
        )


def plan_stack(stack: StackPlan, inputs: dict[str, ObsInput]) -> StackPlan:
    """The stack with its nodes and part shapes (raises ShapeError at the first layer that cannot fit)."""
    nodes: list[LayerNode] = []
    shapes: dict[str, tuple | None] = {}
    shape = _plan_encoder(stack, inputs, nodes)
    need_vector(shape, stack.paths["encoder"], "encoder")
    shapes["encoder"] = shape
    for part in ("core", "decoder"):
        items, path = getattr(stack, part), stack.paths[part]
        if _is_custom(items):
            shape = _custom_node(part, items, shape, stack, nodes)
        else:
            shape = _plan_list(items, shape, path, part, f"{stack.name}.{part}", nodes)
        need_vector(shape, path, part)
        shapes[part] = shape
    return replace(stack, nodes=tuple(nodes), part_shapes=shapes)


def _plan_encoder(stack: StackPlan, inputs: dict[str, ObsInput], nodes: list) -> tuple | None:
    enc, path, label = stack.encoder, stack.paths["encoder"], f"{stack.name}.encoder"
    if stack.encoder_kind == "custom":
        return _custom_node("encoder", enc, None, stack, nodes)
    if stack.encoder_kind == "list":
        return _plan_list(enc, encoder_input_shape(stack.observe, inputs), path, "encoder", label, nodes)
    outs = []
    for key in stack.observe:
        if key in stack.branch_keys:
            items, where = enc["inputs"][key], path + ("inputs", key)
            outs.append(_plan_list(items, inputs[key].shape, where, "encoder", f"{label}.inputs.{key}", nodes, key))
        else:
            outs.append(inputs[key].shape)
    layers = enc.get("layers", [])
    return _plan_list(layers, concat_shape(outs), path + ("layers",), "encoder", f"{label}.layers", nodes)


def _plan_list(
    items: list, shape: tuple | None, path: tuple, part: str, label: str, nodes: list, branch: str | None = None
) -> tuple | None:
    """Append one node per item; returns the list's output shape (None once a shape is not known)."""
    for i, item in enumerate(items):
        name, args = parse_layer_item(item)
        out = None if shape is None else infer_layer(item, shape, path + (i,), part)
        recurrent = LAYERS.get(name).recurrent
        nodes.append(LayerNode(part, f"{label}[{i}]", name, args, path + (i,), shape, out, branch, None, recurrent))
        shape = out
    return shape


def _custom_node(part: str, cfg: dict, shape: tuple | None, stack: StackPlan, nodes: list) -> None:
    """A registered component's node: its output width is known only once it is built."""
    name = cfg["custom"]
    params = cfg.get("params", {})
    nodes.append(
        LayerNode(part, f"{stack.name}.{part}", f"custom:{name}", params, stack.paths[part], shape, None, None, name)
    )
    return None
