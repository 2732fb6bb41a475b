"""The spec's JSON Schema (Draft 2020-12), assembled from the registries.

Every layer builder and every registered component contributes its own fragment, so a plugin
layer is validated exactly like a built-in one. Keys named ``x-...`` are annotations that the
validator uses to word its messages; other JSON Schema tools ignore them.
"""

from __future__ import annotations

from typing import Any

from sfspec.compiler import layers as _builtin_layers  # noqa: F401 (registers the built-in layers)
from sfspec.compiler.config import (
    BOUNDS_PARAM,
    INIT_PARAMS,
    NORMALIZE_PARAMS,
    PREPROCESS_PARAMS,
    SHARE_WEIGHTS_PARAM,
    STD_PARAMS,
)
from sfspec.compiler.interface_config import INTERFACE_PARAMS
from sfspec.compiler.registry import COMPONENT_REGISTRIES, LAYERS, LayerBuilder
from sfspec.spec.config import ENV_PARAMS

SCHEMA_URI = "https://json-schema.org/draft/2020-12/schema"

NUMBER = {"type": "number"}
POSITIVE_INT = {"type": "integer", "minimum": 1}
PROBABILITY = {"type": "number", "minimum": 0, "maximum": 1}


def _obj(properties: dict, required: tuple = (), description: str = "", **extra: Any) -> dict:
    """A closed mapping: unknown keys are errors."""
    out: dict = {"type": "object", "properties": properties, "additionalProperties": False, **extra}
    if required:
        out["required"] = list(required)
    if description:
        out["description"] = description
    return out


def _layer_def(builder: LayerBuilder) -> dict:
    """Schema of the value after a layer's name: inline primary argument, mapping, or nothing."""
    args = _obj(builder.params, builder.required, builder.description, **{"x-layer": builder.name})
    if builder.required and builder.primary is None:
        nothing: Any = {"not": True, "x-expected": f"a mapping of arguments ({', '.join(builder.required)})"}
    elif builder.required:
        nothing = {"not": True, "x-expected": f"its {builder.primary} (e.g. '- {builder.name}: ...') or a mapping"}
    else:
        nothing = True
    if builder.primary is not None:
        inline: Any = {**builder.params[builder.primary], "x-layer": builder.name}
        inline.pop("default", None)
    else:
        inline = {"type": ["object", "null"], "x-expected": "a mapping of arguments, or nothing"}
    return {"if": {"type": "object"}, "then": args, "else": {"if": {"type": "null"}, "then": nothing, "else": inline}}


def _layer_item(section: str) -> dict:
    """One item of a layer list: ``- relu``, ``- linear: 64`` or ``- conv2d: {...}``."""
    names = [n for n in LAYERS.names() if section in LAYERS.get(n).sections]
    bare = [n for n in names if not LAYERS.get(n).required]
    return {
        "if": {"type": "string"},
        "then": {"enum": bare, "x-layer-section": section},
        "else": {
            "type": "object",
            "x-expected": "a layer: a name, or a mapping of one name to its arguments",
            "minProperties": 1,
            "maxProperties": 1,
            "propertyNames": {"enum": names, "x-layer-section": section},
            "properties": {n: {"$ref": f"#/$defs/layers/{n}"} for n in names},
        },
    }


def _custom(section: str) -> dict:
    """``{custom: name, params: {...}}`` for a component registered in Python."""
    registry = COMPONENT_REGISTRIES[section]
    per_name = []
    for name in registry.names():
        params_schema = getattr(registry.get(name), "params_schema", None) or {"type": "object"}
        per_name.append(
            {"if": {"properties": {"custom": {"const": name}}}, "then": {"properties": {"params": params_schema}}}
        )
    schema = _obj(
        {
            "custom": {"enum": registry.names(), "x-registry": section, "description": f"a registered {section}"},
            "params": {"type": "object", "description": "given to the component as cfg (attribute access)"},
        },
        ("custom",),
        **{"x-expected": "a layer list or {custom: name, params: {...}}"},
    )
    if per_name:
        schema["allOf"] = per_name
    return schema


def _list_or_custom(list_ref: str, section: str, description: str) -> dict:
    return {
        "description": description,
        "x-expected": "a layer list or {custom: name, params: {...}}",
        "if": {"type": "array"},
        "then": {"$ref": list_ref},
        "else": {"$ref": f"#/$defs/custom_{section}"},
    }


def _stack_properties() -> dict:
    """encoder/core/decoder: the parts of one actor or critic stack."""
    return {
        "encoder": {
            "description": "observations to one feature vector",
            "x-expected": "a layer list, {inputs: ..., layers: ...} or {custom: name}",
            "if": {"type": "array"},
            "then": {"$ref": "#/$defs/layer_list"},
            "else": {
                "if": {"type": "object", "required": ["custom"]},
                "then": {"$ref": "#/$defs/custom_encoder"},
                "else": {"$ref": "#/$defs/branched_encoder"},
            },
        },
        "core": _list_or_custom("#/$defs/core_layer_list", "core", "memory: [] (identity), gru or lstm"),
        "decoder": _list_or_custom("#/$defs/layer_list", "decoder", "layers after the core"),
    }


def _model_schema() -> dict:
    observe = {"type": "array", "items": {"type": "string"}, "uniqueItems": True, "description": "observation keys"}
    side = _obj({"observe": observe, **_stack_properties()})
    return _obj(
        {
            "custom": {"enum": COMPONENT_REGISTRIES["model"].names(), "x-registry": "model"},
            "params": {"type": "object"},
            "normalize_obs": {
                "description": "running mean/std of observations, stored in the model",
                "if": {"type": "object"},
                "then": _obj(NORMALIZE_PARAMS),
                "else": {"type": "boolean", "x-expected": "true, false or {clip: ..., keys: [...]}"},
            },
            "preprocess": {
                "type": "object",
                "description": "per observation key: how raw values become network input",
                "additionalProperties": _obj(PREPROCESS_PARAMS),
            },
            **_stack_properties(),
            "share_weights": SHARE_WEIGHTS_PARAM,
            "actor": side,
            "critic": side,
            "action": _obj(
                {
                    "std": _obj(STD_PARAMS, description="Box actions: the Gaussian's standard deviation"),
                    "bounds": BOUNDS_PARAM,
                    "mask": {"type": "string", "description": "discrete actions: observation key holding the mask"},
                }
            ),
            "init": _obj(INIT_PARAMS),
        },
        description="the actor-critic: encoder -> core -> decoder -> action and value heads",
    )


def _env_schema() -> dict:
    return _obj(ENV_PARAMS, ("id",))


def train_schema() -> dict:
    """The ``train:`` section's schema: the runner's keys and every registered algorithm's.

    Each algorithm brings its own fragment (as layers do). A key of one algorithm is refused under
    another; the keys' schemas and defaults are the registered ones (the runtime reads its defaults
    from the same fragments).
    """
    from sfspec.runtime.algorithm import ALGORITHMS
    from sfspec.runtime.config import RUNNER_PARAMS

    entries = [ALGORITHMS.get(name) for name in ALGORITHMS.names()]
    properties = {**RUNNER_PARAMS, "algorithm": {**RUNNER_PARAMS["algorithm"], "enum": ALGORITHMS.names()}}
    default = RUNNER_PARAMS["algorithm"]["default"]
    for entry in sorted(entries, key=lambda e: e.name != default):  # the default algorithm's definitions first
        for key, prop in entry.params.items():
            properties.setdefault(key, prop)
    branches = []
    for entry in entries:
        chosen: dict = {"properties": {"algorithm": {"const": entry.name}}}
        if entry.name != default:
            chosen["required"] = ["algorithm"]
        others = {k for e in entries if e is not entry for k in e.params} - set(entry.params)
        refused = {k: {"not": {}, "x-algorithm": entry.name, "x-owners": _owners(k, entries)} for k in sorted(others)}
        branches.append({"if": chosen, "then": {"properties": {**entry.params, **refused}}})
    schema = _obj(properties, description="training: the runner's settings and the algorithm's")
    if branches:
        schema["allOf"] = branches
    return schema


def _owners(key: str, entries: list) -> str:
    return " and ".join(f"'{e.name}'" for e in entries if key in e.params)


def _export_schema() -> dict:
    """The ``export:`` section's schema; the formats are the registered ones (sfspec.export.formats, torch-free)."""
    from sfspec.export.formats import EXPORT_FORMATS

    return _obj(
        {
            "formats": {
                "type": "array",
                "items": {"enum": EXPORT_FORMATS.names()},
                "uniqueItems": True,
                "minItems": 1,  # a bundle without an artifact is refused when read: refuse it here
                "default": EXPORT_FORMATS.default_names(),
            },
            "opset": {"type": "integer", "minimum": 7, "default": 18},
            "batch": {"oneOf": [{"const": "dynamic"}, POSITIVE_INT], "default": "dynamic"},
            "with_value": {"type": "boolean", "default": False},
        }
    )


def build_schema() -> dict:
    """The whole spec schema, from the current contents of the registries."""
    layer_defs = {name: _layer_def(LAYERS.get(name)) for name in LAYERS.names()}
    return {
        "$schema": SCHEMA_URI,
        "$id": "https://sfspec.dev/schemas/spec.json",
        "title": "sfspec spec",
        "description": "A YAML spec for an actor-critic policy, its environment, training and export.",
        "type": "object",
        "properties": {
            "$schema": {"type": "string"},
            "extends": {
                "description": "base spec file(s), relative to this one, deep-merged under it",
                "if": {"type": "array"},
                "then": {"type": "array", "items": {"type": "string"}},
                "else": {"type": "string"},
            },
            "env": _env_schema(),
            "model": _model_schema(),
            "train": train_schema(),
            "export": _export_schema(),
            "interface": _interface_schema(),
        },
        "required": ["env", "model"],
        "additionalProperties": False,
        "$defs": {
            "layers": layer_defs,
            "layer_item": _layer_item("encoder"),
            "core_layer_item": _layer_item("core"),
            "layer_list": {"type": "array", "items": {"$ref": "#/$defs/layer_item"}},
            "core_layer_list": {"type": "array", "items": {"$ref": "#/$defs/core_layer_item"}},
            "branched_encoder": _obj(
                {
                    "inputs": {
                        "type": "object",
                        "description": "one layer list per observation key; outputs are concatenated",
                        "additionalProperties": {"$ref": "#/$defs/layer_list"},
                    },
                    "layers": {"$ref": "#/$defs/layer_list", "description": "after the concatenation"},
                },
            ),
            **{f"custom_{section}": _custom(section) for section in ("encoder", "core", "decoder")},
        },
    }


def _interface_schema() -> dict:
    return _obj(INTERFACE_PARAMS, description="between the network and a robot: units, history, last action")


_SECTIONS = {
    "env": _env_schema,
    "model": _model_schema,
    "train": train_schema,
    "export": _export_schema,
    "interface": _interface_schema,
}


def section_keys() -> dict[str, list[str]]:
    """The keys of each top-level section (env, model, train, export), for hints about misplaced keys."""
    return {name: list(make()["properties"]) for name, make in _SECTIONS.items()}


def schema_default(section: str, key: str) -> Any:
    """The schema's default for ``section.key`` (e.g. train.rollout), or None."""
    return _SECTIONS[section]()["properties"][key].get("default")
