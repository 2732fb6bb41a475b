"""Validate a loaded spec against the schema; turn JSON Schema errors into messages users can act on."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jsonschema

from sfspec.compiler.registry import COMPONENT_REGISTRIES, LAYERS
from sfspec.errors import SpecError, SpecIssue, did_you_mean
from sfspec.spec.loader import LoadedSpec, SourceMap
from sfspec.spec.schema import build_schema

_TYPE_NAMES = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "null": "nothing (null)",
}


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return "nothing (null)"


def _show(value: Any) -> str:
    text = repr(value) if not isinstance(value, (dict, list)) else ""
    return f" {text}" if text and len(text) <= 40 else ""


def validator() -> jsonschema.Draft202012Validator:
    """A validator for the schema as the registries stand now."""
    return jsonschema.Draft202012Validator(build_schema())


def validate_spec(loaded: LoadedSpec) -> None:
    """Raise a SpecError listing every schema violation in the spec, in file order."""
    issues = schema_issues(loaded.data, loaded.source_map)
    if issues:
        raise SpecError(issues)


def schema_issues(data: Any, smap: SourceMap) -> list[SpecIssue]:
    """Every schema violation as a positioned issue (deduplicated, sorted by position)."""
    found: dict[tuple, SpecIssue] = {}
    for error in validator().iter_errors(data):
        for path, message, at_key in _explain(error):
            issue = SpecIssue(smap.locate(path, key=at_key), tuple(path), message)
            found.setdefault((issue.path, issue.message), issue)

    def order(issue: SpecIssue) -> tuple:
        loc = issue.location
        return (loc.source if loc else "", (loc.line or 0) if loc else 0, (loc.col or 0) if loc else 0)

    return sorted(found.values(), key=order)


def _explain(error: jsonschema.ValidationError) -> Iterator[tuple[tuple, str, bool]]:
    """Yield (path, message, point-at-key) for one error, descending into unions."""
    path = tuple(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    value = error.instance
    kind = error.validator

    if kind in ("anyOf", "oneOf"):
        yield from _explain_union(error)
    elif kind == "additionalProperties":
        allowed = list(schema.get("properties", {}))
        extra = [k for k in value if k not in allowed]
        for key in extra:
            yield path + (key,), _unknown_key(key, allowed, schema), True
    elif kind == "propertyNames":
        yield from _explain_property_name(error, path)
    elif kind == "enum":
        yield path, _bad_enum(value, schema, path), False
    elif kind == "type":
        expected = schema.get("x-expected") or " or ".join(_TYPE_NAMES[t] for t in _as_list(schema["type"]))
        yield path, f"expected {expected}, got {_kind(value)}{_show(value)}", False
    elif kind == "required":
        missing = [k for k in schema.get("required", []) if k not in value]
        for key in missing:
            if did_you_mean(key, value):
                continue  # a misspelt key is reported as unknown, with this one suggested
            yield path, f"missing required key '{key}'", False
    elif kind in ("not", "false") or (kind == "not" and schema.get("x-expected")):
        yield path, f"expected {schema.get('x-expected', 'something else')}", False
    elif kind == "maxProperties" and "x-expected" in schema:
        keys = ", ".join(map(str, value))
        yield (
            path,
            f"a layer item names exactly one layer, got {len(value)} ({keys}): give each its own '- ' item",
            False,
        )
    elif kind == "minProperties" and "x-expected" in schema:
        yield path, f"expected {schema['x-expected']}, got an empty mapping", False
    elif kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        words = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
        yield path, f"must be {words[kind]} {error.validator_value}, got {value!r}", False
    elif kind == "uniqueItems":
        yield path, "items must be unique", False
    elif kind == "minItems":
        yield path, f"needs at least {error.validator_value} item(s)", False
    elif kind == "maxItems":
        yield path, f"takes at most {error.validator_value} item(s)", False
    elif kind == "pattern":
        yield (
            path,
            f"{value!r} is not valid here (expected {schema.get('description') or error.validator_value})",
            False,
        )
    elif kind == "const":
        yield path, f"expected {error.validator_value!r}, got {value!r}", False
    else:
        yield path, error.message, False


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def _unknown_key(key: str, allowed: list[str], schema: dict) -> str:
    layer = schema.get("x-layer")
    what = f"unknown argument '{key}' for {layer}" if layer else f"unknown key '{key}'"
    hint = did_you_mean(key, allowed)
    if not hint and allowed:
        hint = f" (expected one of: {', '.join(allowed)})"
    return what + hint


def _explain_property_name(error: jsonschema.ValidationError, path: tuple) -> Iterator[tuple[tuple, str, bool]]:
    names_schema = error.schema.get("propertyNames", {})
    for sub in error.context or []:
        name = sub.instance
        if "x-layer-section" in names_schema:
            yield path + (name,), _unknown_layer(name, names_schema), True
        else:
            yield path + (name,), f"key '{name}' is not allowed: {sub.message}", True
    if not error.context:
        # jsonschema reports the failing name as the instance of the error itself
        yield path, error.message, False


def _unknown_layer(name: str, schema: dict) -> str:
    section = schema["x-layer-section"]
    if name in LAYERS:
        builder = LAYERS.get(name)
        if section not in builder.sections:
            where = " or ".join(f"model.{s}" for s in sorted(builder.sections))
            kind = "a recurrent layer" if builder.recurrent else "a layer"
            return f"'{name}' is {kind}, allowed only in {where}"
        return f"'{name}' needs arguments: write '- {name}: {{{', '.join(builder.required)}: ...}}'"
    return f"unknown layer '{name}'{did_you_mean(name, schema['enum'] + LAYERS.names())}"


def _bad_enum(value: Any, schema: dict, path: tuple) -> str:
    if "x-layer-section" in schema:
        in_section = (
            isinstance(value, str) and value in LAYERS and schema["x-layer-section"] in LAYERS.get(value).sections
        )
        if isinstance(value, str) and value in LAYERS and not in_section:
            return _unknown_layer(value, schema)
        if isinstance(value, str) and value in LAYERS:
            builder = LAYERS.get(value)
            example = f"'- {value}: ...'" if builder.primary else f"'- {value}: {{{', '.join(builder.required)}: ...}}'"
            return f"layer '{value}' needs arguments ({', '.join(builder.required)}): write {example}"
        return _unknown_layer(str(value), schema)
    registry = schema.get("x-registry")
    if registry:
        names = COMPONENT_REGISTRIES[registry].names()
        if not names:
            return (
                f"unknown {registry} '{value}': no custom {registry} is registered "
                "(load plugins with --plugin MODULE or the 'sfspec.plugins' entry point)"
            )
        return f"unknown {registry} '{value}'{did_you_mean(str(value), names)} (registered: {', '.join(names)})"
    options = schema["enum"]
    shown = ", ".join(repr(o) for o in options)
    hint = did_you_mean(str(value), [str(o) for o in options]) if isinstance(value, str) else ""
    return f"{value!r} is not one of {shown}{hint}" if hint else f"{value!r} is not one of {shown}"


def _explain_union(error: jsonschema.ValidationError) -> Iterator[tuple[tuple, str, bool]]:
    """For anyOf/oneOf: report the branch whose type matches the value, else the expected types."""
    branches: dict[int, list[jsonschema.ValidationError]] = {}
    for sub in error.context or []:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    matching = [
        errs
        for errs in branches.values()
        if not any(e.validator in ("type", "const") and e.absolute_path == error.absolute_path for e in errs)
    ]
    if error.validator == "oneOf" and not branches:
        yield tuple(error.absolute_path), "matches more than one allowed form", False
        return
    if len(matching) == 1:
        for sub in matching[0]:
            yield from _explain(sub)
        return
    expected = []
    for option in error.validator_value:
        if "const" in option:
            expected.append(repr(option["const"]))
        elif "type" in option:
            expected += [_TYPE_NAMES[t] for t in _as_list(option["type"])]
    path = tuple(error.absolute_path)
    wanted = " or ".join(dict.fromkeys(expected)) or "another form"
    yield path, f"expected {wanted}, got {_kind(error.instance)}{_show(error.instance)}", False
