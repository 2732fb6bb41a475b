"""Load a spec: safe YAML with every node's position, ``extends`` and ``--set`` overrides.

Nothing here imports torch: loading and validating a spec must stay fast.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any

import yaml

from sfspec.errors import Location, SpecError, SpecIssue, did_you_mean, format_path, spec_error


@dataclass
class SourceMap:
    """Positions of the values (and of the keys naming them) in a spec tree, by path."""

    values: dict[tuple, Location] = field(default_factory=dict)
    keys: dict[tuple, Location] = field(default_factory=dict)

    def locate(self, path: Sequence, key: bool = False) -> Location | None:
        """The position of ``path`` (its key if asked), else of its nearest known ancestor."""
        path = tuple(path)
        if key and path in self.keys:
            return self.keys[path]
        for n in range(len(path), -1, -1):
            if path[:n] in self.values:
                return self.values[path[:n]]
        return None


@dataclass
class LoadedSpec:
    """A spec tree of plain dicts, lists and scalars, with where each value came from."""

    data: dict
    source_map: SourceMap
    source: str  # the top-level file, for messages
    files: list[str] = field(default_factory=list)  # every file read, top-level first


# YAML 1.1 reads '3e-4' as a string; a spec means a number.
_FLOAT_RE = re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


class _SpecLoader(yaml.SafeLoader):
    """Safe loader that rejects duplicate keys and reads 1e-3 as a float."""


_SpecLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789"))


_PLAIN_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")


def _loc(source: str, mark: yaml.Mark) -> Location:
    return Location(source, mark.line + 1, mark.column + 1)


def _construct(node: yaml.Node, loader: _SpecLoader, source: str, path: tuple, smap: SourceMap) -> Any:
    """Build plain Python data from a composed YAML node, recording positions."""
    smap.values[path] = _loc(source, node.start_mark)
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in _PLAIN_TAGS:
        shown = node.tag.replace("tag:yaml.org,2002:", "!!")
        raise spec_error(_loc(source, node.start_mark), path, f"tag '{shown}' is not allowed: a spec is plain data")
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolves '<<' merge keys
        out: dict = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                raise spec_error(_loc(source, key_node.start_mark), path, "mapping keys must be scalars")
            key = str(key) if not isinstance(key, str) else key
            if key in out:
                first = smap.keys[path + (key,)]
                raise spec_error(
                    _loc(source, key_node.start_mark),
                    path + (key,),
                    f"duplicate key '{key}' (first defined at line {first.line})",
                )
            smap.keys[path + (key,)] = _loc(source, key_node.start_mark)
            out[key] = _construct(value_node, loader, source, path + (key,), smap)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, loader, source, path + (i,), smap) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def parse_yaml(text: str, source: str) -> tuple[Any, SourceMap]:
    """Parse one YAML document safely into plain data and a source map."""
    loader = _SpecLoader(text)
    smap = SourceMap()
    try:
        node = loader.get_single_node()
        if node is None:
            return None, smap
        return _construct(node, loader, source, (), smap), smap
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark or exc.context_mark
        tag = ""
        if exc.problem and "tag" in exc.problem:
            tag = exc.problem.split("tag", 1)[1].strip(" '").replace("tag:yaml.org,2002:", "!!")
        msg = f"tag '{tag}' is not allowed: a spec is plain data" if tag else str(exc.problem)
        raise spec_error(_loc(source, mark) if mark else Location(source), (), msg) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or "invalid YAML"
        if exc.context:
            problem = f"{exc.context}, {problem}"
        raise spec_error(_loc(source, mark) if mark else Location(source), (), f"YAML syntax: {problem}") from None
    except yaml.YAMLError as exc:  # e.g. a reader error on bad bytes
        raise spec_error(Location(source), (), f"YAML: {exc}") from None
    finally:
        loader.dispose()


def _read_mapping_file(path: FsPath, shown: str) -> tuple[dict, SourceMap]:
    """Read one spec file, which must hold a non-empty mapping."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise spec_error(Location(shown), (), "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise spec_error(Location(shown), (), f"cannot read: {exc}") from None
    data, smap = parse_yaml(text, shown)
    if data is None:
        raise spec_error(Location(shown, 1, 1), (), "the spec is empty: expected a mapping with 'env' and 'model'")
    if not isinstance(data, dict):
        raise spec_error(smap.locate(()), (), f"the spec must be a mapping, not a {_kind(data)}")
    return data, smap


def _kind(value: Any) -> str:
    return {dict: "mapping", list: "list", str: "string", bool: "boolean", int: "integer", float: "number"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


def deep_merge(base: Any, over: Any) -> Any:
    """Merge ``over`` onto ``base``: mappings merge key by key, anything else is replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        merged = dict(base)
        for key, value in over.items():
            merged[key] = deep_merge(base[key], value) if key in base else value
        return merged
    return over


def _merged_source_map(data: Any, over: SourceMap, base: SourceMap, path: tuple = ()) -> SourceMap:
    """Positions of a merged tree: the overriding file's where it has the path, else the base's."""
    out = SourceMap()

    def walk(value: Any, p: tuple) -> None:
        for m_out, m_over, m_base in ((out.values, over.values, base.values), (out.keys, over.keys, base.keys)):
            loc = m_over.get(p) or m_base.get(p)
            if loc is not None:
                m_out[p] = loc
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, p + (k,))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, p + (i,))

    walk(data, path)
    return out


def load_spec(path: str | FsPath, overrides: Sequence[str] = ()) -> LoadedSpec:
    """Read a spec file, resolve its ``extends`` chain and apply ``--set`` overrides."""
    shown = str(path)
    data, smap, files = _load_with_extends(FsPath(path), shown, chain=())
    loaded = LoadedSpec(data, smap, shown, files)
    return apply_overrides(loaded, overrides)


def _load_with_extends(path: FsPath, shown: str, chain: tuple) -> tuple[dict, SourceMap, list[str]]:
    real = path.resolve()
    if real in chain:
        names = " -> ".join(str(p) for p in (*chain, real))
        raise spec_error(Location(shown), ("extends",), f"extends cycle: {names}")
    data, smap = _read_mapping_file(path, shown)
    files = [shown]
    extends = data.pop("extends", None)
    if extends is None:
        return data, smap, files
    bases = [extends] if isinstance(extends, str) else extends
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise spec_error(smap.locate(("extends",)), ("extends",), "extends must be a file name or a list of file names")
    merged: dict = {}
    merged_map = SourceMap()
    for i, base in enumerate(bases):
        base_path = path.parent / base
        item_path = ("extends",) if isinstance(extends, str) else ("extends", i)
        if not base_path.is_file():
            raise spec_error(smap.locate(item_path), item_path, f"extends: file not found: {base_path}")
        base_data, base_map, base_files = _load_with_extends(base_path, str(base_path), chain + (real,))
        new = deep_merge(merged, base_data)
        merged_map = _merged_source_map(new, base_map, merged_map)
        merged = new
        files += base_files
    new = deep_merge(merged, data)
    return new, _merged_source_map(new, smap, merged_map), files


_PATH_PART = re.compile(r"([^.\[\]]+)|\[(-?\d+)\]")


def parse_dotted_path(text: str) -> tuple:
    """Split ``model.encoder[2].linear`` into ('model', 'encoder', 2, 'linear')."""
    parts: list = []
    pos = 0
    for match in _PATH_PART.finditer(text):
        between = text[pos : match.start()]
        if between not in ("", "."):
            raise ValueError(f"cannot parse path '{text}'")
        parts.append(match.group(1) if match.group(1) is not None else int(match.group(2)))
        pos = match.end()
    if pos != len(text) or not parts or not isinstance(parts[0], str):
        raise ValueError(f"cannot parse path '{text}'")
    return tuple(parts)


def apply_overrides(loaded: LoadedSpec, overrides: Sequence[str]) -> LoadedSpec:
    """Apply ``path=value`` overrides (values read as YAML); the result is validated like any spec."""
    issues: list[SpecIssue] = []
    for text in overrides:
        where = Location(f"--set {text}")
        if "=" not in text:
            issues.append(SpecIssue(where, (), "expected PATH=VALUE, e.g. train.lr=3e-4"))
            continue
        raw_path, raw_value = text.split("=", 1)
        try:
            path = parse_dotted_path(raw_path.strip())
        except ValueError as exc:
            issues.append(SpecIssue(where, (), str(exc)))
            continue
        try:
            value, _ = parse_yaml(raw_value, f"--set {text}") if raw_value.strip() else (None, None)
        except SpecError as exc:
            issues.extend(SpecIssue(where, path, i.message) for i in exc.issues)
            continue
        problem = _set_path(loaded.data, path, value)
        if problem:
            issues.append(SpecIssue(where, path, problem))
            continue
        _drop_positions(loaded.source_map, path)
        loaded.source_map.values[path] = where
        loaded.source_map.keys[path] = where
    if issues:
        raise SpecError(issues)
    return loaded


def _set_path(data: dict, path: tuple, value: Any) -> str | None:
    """Set ``value`` at ``path``, creating mappings on the way; return a problem or None."""
    node: Any = data
    for depth, part in enumerate(path[:-1]):
        nxt = path[depth + 1]
        if isinstance(part, int):
            if not isinstance(node, list) or not -len(node) <= part < len(node):
                return _missing_index(node, path[:depth], part)
            node = node[part]
        else:
            if not isinstance(node, dict):
                return f"'{format_path(path[:depth])}' is a {_kind(node)}, it has no key '{part}'"
            if part not in node or node[part] is None:
                if isinstance(nxt, int):
                    return f"'{format_path(path[: depth + 1])}' is not a list in this spec{did_you_mean(part, node)}"
                node[part] = {}
            node = node[part]
    last = path[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or not -len(node) <= last < len(node):
            return _missing_index(node, path[:-1], last)
    elif not isinstance(node, dict):
        return f"'{format_path(path[:-1])}' is a {_kind(node)}, it has no key '{last}'"
    node[last] = value
    return None


def _missing_index(node: Any, path: tuple, index: int) -> str:
    if not isinstance(node, list):
        return f"'{format_path(path)}' is a {_kind(node)}, not a list"
    return f"index {index} is out of range: '{format_path(path)}' has {len(node)} items"


def _drop_positions(smap: SourceMap, path: tuple) -> None:
    """Forget positions under a replaced subtree."""
    n = len(path)
    for table in (smap.values, smap.keys):
        for p in [p for p in table if p[:n] == path]:
            del table[p]
