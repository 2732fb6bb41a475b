"""Validate a loaded spec against the schema; turn JSON Schema errors into messages users can act on."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import jsonschema

from sfspec.compiler.layer_count import layer_count_issues  # not budget: that imports numpy
from sfspec.compiler.registry import COMPONENT_REGISTRIES, LAYERS
from sfspec.errors import SpecError, SpecIssue, did_you_mean
from sfspec.spec.loader import LoadedSpec, SourceMap
from sfspec.spec.schema import build_schema, section_keys

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
    """A short value for a message: one line of the file at most, never a block of it."""
    if isinstance(value, str) and "\n" in value.strip():
        return ""
    text = repr(value) if not isinstance(value, (dict, list)) else ""
    return f" {text}" if text and len(text) <= 40 else ""


_NON_FINITE_WORDS = {"nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity", ".inf", "+.inf", "-.inf"}


def validator() -> jsonschema.Draft202012Validator:
    """A validator for the schema as the registries stand now."""
    return jsonschema.Draft202012Validator(build_schema())


def validate_spec(loaded: LoadedSpec) -> None:
    """Raise a SpecError listing every schema violation in the spec, in file order.

    Beyond the schema: numbers must be finite and fit in 64 bits, and the model must not expand to
    more layers than ``MAX_LAYERS`` (checked by arithmetic, before any ``repeat`` is expanded).
    """
    smap = loaded.source_map
    numbers = number_issues(loaded.data, smap)
    # One mistake, one error: infinity also breaks a bound ('gamma: .inf' is not <= 1); being non-finite is the cause.
    flagged = {issue.path for issue in numbers}
    issues = [issue for issue in schema_issues(loaded.data, smap) if issue.path not in flagged] + numbers
    if not issues:
        issues = layer_count_issues(loaded.data, smap)
    if issues:
        raise SpecError(sorted(issues, key=_order))


def _order(issue: SpecIssue) -> tuple:
    loc = issue.location
    return (loc.source if loc else "", (loc.line or 0) if loc else 0, (loc.col or 0) if loc else 0)


INT64_MAX = 2**63 - 1
# Sections whose numbers sfspec itself uses: NaN, infinity and integers past int64 are mistakes there.
# env.kwargs go to the environment, which may give infinity a meaning (an unbounded limit): only NaN is refused.
_STRICT_SECTIONS = ("train", "model", "export", "env")


def number_issues(data: Any, smap: SourceMap) -> list[SpecIssue]:
    """NaN anywhere; infinity and integers beyond 64 bits outside env.kwargs."""
    issues: list[SpecIssue] = []
    if not isinstance(data, dict):
        return issues
    for section in _STRICT_SECTIONS:
        if section in data:
            _walk_numbers(data[section], (section,), smap, issues)
    return issues


def _walk_numbers(value: Any, path: tuple, smap: SourceMap, issues: list[SpecIssue]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _walk_numbers(item, path + (key,), smap, issues)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _walk_numbers(item, path + (i,), smap, issues)
    elif isinstance(value, float) and not math.isfinite(value):
        free = path[:2] == ("env", "kwargs") and not math.isnan(value)
        if not free:
            what = "NaN" if math.isnan(value) else "infinity"
            issues.append(SpecIssue(smap.locate(path), path, f"must be a finite number, got {what}"))
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT64_MAX:
        if path[:2] != ("env", "kwargs"):
            issues.append(SpecIssue(smap.locate(path), path, f"{_magnitude(value)} does not fit in 64 bits"))


def _magnitude(value: int) -> str:
    return f"a {len(str(abs(value)))}-digit integer"


def schema_issues(data: Any, smap: SourceMap) -> list[SpecIssue]:
    """Every schema violation as a positioned issue (deduplicated, sorted by position)."""
    found: dict[tuple, SpecIssue] = {}
    for error in validator().iter_errors(data):
        for path, message, at_key in _explain(error):
            issue = SpecIssue(smap.locate(path, key=at_key), tuple(path), message)
            found.setdefault((issue.path, issue.message), issue)

    return sorted(found.values(), key=_order)


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
            yield path + (key,), _unknown_key(key, allowed, schema, path), True
    elif kind == "propertyNames":
        yield from _explain_property_name(error, path)
    elif kind == "enum":
        yield path, _bad_enum(value, schema, path), False
    elif kind == "type":
        expected = schema.get("x-expected") or " or ".join(_TYPE_NAMES[t] for t in _as_list(schema["type"]))
        yield path, f"expected {expected}, got {_kind(value)}{_show(value)}{_non_finite_hint(value, schema)}", False
    elif kind == "required":
        missing = [k for k in schema.get("required", []) if k not in value]
        for key in missing:
            if did_you_mean(key, value):
                continue  # a misspelt key is reported as unknown, with this one suggested
            yield path, f"missing required key '{key}'", False
    elif kind == "not" and "x-algorithm" in schema:
        owners, chosen = schema["x-owners"], schema["x-algorithm"]
        yield path, f"'{path[-1]}' is a setting of train.algorithm {owners}, not of '{chosen}'", True
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


def _non_finite_hint(value: Any, schema: dict) -> str:
    wants_number = "number" in _as_list(schema.get("type", []))
    if wants_number and isinstance(value, str) and value.strip().lower() in _NON_FINITE_WORDS:
        return " (settings must be finite numbers: NaN and infinity are not allowed)"
    return ""


def _unknown_key(key: str, allowed: list[str], schema: dict, path: tuple = ()) -> str:
    layer = schema.get("x-layer")
    what = f"unknown argument '{key}' for {layer}" if layer else f"unknown key '{key}'"
    hint = "" if layer else other_name_hint(key, path)
    hint = hint or did_you_mean(key, allowed)
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


# ---------------------------------------------------------------- other tools' names for our keys

_SIZE_NOT_COUNT = (
    "sfspec's minibatches is how many minibatches split each rollout, not their size: "
    "minibatches = rollout x num_envs / batch_size"
)
# Names from Stable-Baselines3, CleanRL, rsl_rl, rl_games and Sample Factory -> (our dotted path, note).
OTHER_NAMES: dict[str, tuple[str, str]] = {
    **dict.fromkeys(["learning_rate", "lr_rate", "actor_lr"], ("train.lr", "")),
    **dict.fromkeys(
        ["n_steps", "num_steps", "num_steps_per_env", "horizon_length", "rollout_length", "n_rollout_steps"],
        ("train.rollout", "steps per environment per update"),
    ),
    **dict.fromkeys(
        ["n_epochs", "num_epochs", "update_epochs", "num_learning_epochs", "learning_epochs", "mini_epochs",
         "ppo_epochs", "noptepochs"],
        ("train.epochs", ""),
    ),
    **dict.fromkeys(["batch_size", "minibatch_size", "mini_batch_size"], ("train.minibatches", _SIZE_NOT_COUNT)),
    **dict.fromkeys(
        ["num_minibatches", "num_mini_batches", "nminibatches", "num_batches_per_epoch", "n_minibatches"],
        ("train.minibatches", ""),
    ),
    **dict.fromkeys(
        ["total_timesteps", "total_steps", "num_timesteps", "train_for_env_steps", "max_steps", "timesteps"],
        ("train.steps", "environment steps in total"),
    ),
    **dict.fromkeys(["max_iterations", "max_epochs"], ("train.steps", "sfspec counts environment steps")),
    **dict.fromkeys(["ent_coef", "entropy_coeff", "ent_coeff", "exploration_loss_coeff"], ("train.entropy_coef", "")),
    **dict.fromkeys(
        ["vf_coef", "vf_coeff", "value_loss_coef", "value_loss_coeff", "critic_coef"], ("train.value_coef", "")
    ),
    **dict.fromkeys(
        ["clip_range", "clip_param", "clip_coef", "e_clip", "ppo_clip_ratio", "clip_ratio", "cliprange"],
        ("train.clip", ""),
    ),
    **dict.fromkeys(
        ["clip_range_vf", "ppo_clip_value", "clip_vloss", "use_clipped_value_loss", "cliprange_vf"],
        ("train.value_clip", "a number (null: unclipped)"),
    ),
    **dict.fromkeys(["lam", "lambda", "gae_lam", "tau"], ("train.gae_lambda", "")),
    **dict.fromkeys(["grad_norm", "max_norm", "clip_grad_norm", "max_grad"], ("train.max_grad_norm", "")),
    **dict.fromkeys(["discount", "discount_factor"], ("train.gamma", "")),
    **dict.fromkeys(["kl_threshold"], ("train.desired_kl", "with lr_schedule: kl_adaptive")),
    **dict.fromkeys(["schedule", "learning_rate_schedule"], ("train.lr_schedule", "")),
    **dict.fromkeys(["anneal_lr"], ("train.lr_schedule", "write lr_schedule: linear")),
    **dict.fromkeys(["normalize_advantage", "norm_adv", "normalize_adv"], ("train.normalize_advantages", "")),
    **dict.fromkeys(["normalize_value", "normalize_values", "norm_returns"], ("train.normalize_returns", "")),
    **dict.fromkeys(
        ["normalize_input", "normalize_observations", "norm_obs", "obs_norm", "normalize_observation"],
        ("model.normalize_obs", ""),
    ),
    **dict.fromkeys(["seq_length", "seq_len", "recurrence", "bptt_len"], ("train.bptt", "")),
    **dict.fromkeys(["n_envs", "num_actors", "num_workers", "nenvs"], ("env.num_envs", "")),
    **dict.fromkeys(["env_id", "env_name", "task", "environment", "env_type"], ("env.id", "")),
    **dict.fromkeys(["env_kwargs", "env_config"], ("env.kwargs", "")),
    **dict.fromkeys(["cuda", "use_cuda", "rl_device", "sim_device"], ("train.device", "")),
    **dict.fromkeys(["save_freq", "save_interval"], ("train.checkpoint_interval", "in updates")),
    **dict.fromkeys(
        ["net_arch", "hidden_sizes", "hidden_dims", "policy_kwargs", "network", "units"],
        ("model.encoder", "a layer list, e.g. '- mlp: [64, 64]'"),
    ),
}


def other_name_hint(key: str, path: tuple) -> str:
    """' (sfspec calls it ...)' for another tool's name, or where one of our keys belongs; else ''."""
    if len(path) > 1:
        return ""  # only the top level and its sections hold settings with other tools' names
    here = path[0] if path else ""
    target, note = OTHER_NAMES.get(str(key).lower(), ("", ""))
    if not target:
        homes = [s for s, keys in section_keys().items() if key in keys and s != here]
        if len(homes) != 1:
            return ""
        where = f" in {here}" if here else " at the top level"
        return f"{where} (it belongs in {homes[0]}: '{homes[0]}.{key}')"
    section, name = target.split(".", 1)
    shown = name if section == here else target
    return f" (sfspec calls it '{shown}'{': ' + note if note else ''})"
