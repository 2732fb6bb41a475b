"""How many layers a model section expands to, by arithmetic (torch-free, nothing is expanded).

``layer_count_issues`` runs with the schema (``pipeline.load``) and first thing in planning, so
``repeat: {times: 1000000000}`` is refused before any walk expands it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sfspec.compiler import layers as _builtin_layers  # noqa: F401 (registers the built-in layers)
from sfspec.compiler.registry import LAYERS
from sfspec.compiler.shapes import parse_layer_item
from sfspec.errors import SpecIssue
from sfspec.sourcemap import SourceMap

MAX_LAYERS = 10_000  # layers in one model once repeat, mlp and the CNNs are expanded
_PARTS = ("encoder", "core", "decoder")


def layer_lists(spec: dict) -> Iterator[tuple[tuple, list]]:
    """Every layer list of the model section, with its spec path (custom components have none)."""
    model = spec.get("model") if isinstance(spec, dict) else None
    if not isinstance(model, dict):
        return
    for owner, cfg in (((), model), (("actor",), model.get("actor")), (("critic",), model.get("critic"))):
        if not isinstance(cfg, dict):
            continue
        for part in _PARTS:
            value, path = cfg.get(part), ("model", *owner, part)
            if isinstance(value, list):
                yield path, value
            elif isinstance(value, dict) and "custom" not in value:
                for key, items in (value.get("inputs") or {}).items():
                    yield path + ("inputs", key), items
                if isinstance(value.get("layers"), list):
                    yield path + ("layers",), value["layers"]


def count_layers(items: list) -> int:
    """How many layers a validated layer list expands to (arithmetic: nothing is expanded)."""
    return sum(_count_item(item) for item in items)


def _count_item(item: Any) -> int:
    name, args = parse_layer_item(item)
    expand = LAYERS.get(name).expand
    if expand is not None:
        return count_layers(expand(args))
    if name == "repeat":
        return args["times"] * count_layers(args["layers"])
    if name == "residual":
        return 1 + count_layers(args["layers"])
    return 1


def _heaviest(items: list, path: tuple) -> tuple:
    """The spec path most responsible for a list's layer count: a repeat's 'times' where one is."""
    i = max(range(len(items)), key=lambda j: _count_item(items[j]))
    name, args = parse_layer_item(items[i])
    if name in ("repeat", "residual") and count_layers(args["layers"]) > MAX_LAYERS:
        inline = isinstance(items[i], dict) and isinstance(items[i][name], list)  # '- residual: [...]'
        return _heaviest(args["layers"], path + ((i, name) if inline else (i, name, "layers")))
    return path + (i, name, "times") if name == "repeat" else path + (i,)


def layer_count_issues(spec: dict, smap: SourceMap) -> list[SpecIssue]:
    """An issue when the model expands to more than MAX_LAYERS layers (a schema-valid spec)."""
    lists = list(layer_lists(spec))
    counts = [count_layers(items) for _, items in lists]
    total = sum(counts)
    if total <= MAX_LAYERS:
        return []
    path, items = lists[counts.index(max(counts))]
    where = _heaviest(items, path)
    message = f"the model would have {format_count(total)} layers, more than the limit of {MAX_LAYERS:,}"
    return [SpecIssue(smap.locate(where), where, message)]


def format_count(n: int) -> str:
    """A count as people read it: 1,234, or about 10^18 when it is huge."""
    return f"{n:,}" if n < 10**15 else f"about 10^{len(str(n)) - 1}"
