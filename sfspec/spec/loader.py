"""Load a spec: safe YAML with every node's position, ``extends`` and ``--set`` overrides.

Nothing here imports torch: loading and validating a spec must stay fast.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any

import yaml

from sfspec.errors import Location, SpecError, SpecIssue, did_you_mean, format_path, spec_error
from sfspec.sourcemap import SourceMap  # its own module (the compiler uses it); importable from here too


@dataclass
class LoadedSpec:
    """A spec tree of plain dicts, lists and scalars, with where each value came from."""

    data: dict
    source_map: SourceMap
    source: str  # the top-level file, for messages
    files: list[str] = field(default_factory=list)  # every file read, top-level first


# YAML 1.1 reads '3e-4' as a string; a spec means a number.
_FLOAT_RE = re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")

# Limits that turn hostile input into an error instead of a stalled or exhausted machine.
# A real spec is a few kilobytes, a few hundred values and a dozen levels deep. Bytes, values and extends
# entries are one budget for a whole spec (the file and every file it extends): per file, a list of 40
# copies of one base would multiply them. PyYAML parses in pure Python (~1 s per 20,000 values, and the
# schema takes about as long again), so these keep a worst-case `sfspec validate` near a second.
MAX_SPEC_BYTES = 128 * 1024
MAX_DEPTH = 64  # nested mappings and lists
MAX_VALUES = 10_000  # values after YAML aliases are expanded (billion laughs); a real spec has hundreds
MAX_EXTENDS = 16  # extends entries, counting those of the files extended
YAML_SUFFIXES = (".yaml", ".yml")


class _Budget:
    """What one ``load_spec`` has used so far, across every file it reads: the limits hold for the total."""

    def __init__(self) -> None:
        self.bytes = 0
        self.nodes = 0  # YAML nodes composed
        self.values = 0  # values built, aliases expanded, counted again each time an extends reuses a file
        self.extends = 0  # extends entries
        self.files = 0  # files parsed
        self.parsed: dict[FsPath, tuple[dict, SourceMap]] = {}  # each base file parsed once per load

    def in_all(self) -> str:
        """' (counting the files it extends)' once a second file is read, else ''."""
        return " (counting the files it extends)" if self.files > 1 else ""


class _SpecLoader(yaml.SafeLoader):
    """Safe loader that reads 1e-3 as a float and caps nesting depth and the number of nodes."""

    source = "<spec>"
    depth = 0
    budget: _Budget

    def compose_node(self, parent: Any, index: Any) -> Any:
        """Compose one node, refusing documents nested or sized beyond the limits."""
        mark = self.peek_event().start_mark
        self.depth += 1
        self.budget.nodes += 1
        try:
            if self.depth > MAX_DEPTH:
                raise spec_error(_loc(self.source, mark), (), f"nested more than {MAX_DEPTH} levels deep")
            if self.budget.nodes > MAX_VALUES:
                message = f"more than {MAX_VALUES:,} values in one spec{self.budget.in_all()}"
                raise spec_error(_loc(self.source, mark), (), message)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


_SpecLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789"))


_PLAIN_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")


def _loc(source: str, mark: yaml.Mark) -> Location:
    return Location(source, mark.line + 1, mark.column + 1)


def _construct(node: yaml.Node, loader: _SpecLoader, source: str, path: tuple, smap: SourceMap, budget: _Budget) -> Any:
    """Build plain Python data from a composed YAML node, recording positions."""
    where = _loc(source, node.start_mark)
    budget.values += 1
    if budget.values > MAX_VALUES:
        message = (
            f"the spec expands to more than {MAX_VALUES:,} values{budget.in_all()} "
            "(YAML aliases '*name' repeat whole subtrees)"
        )
        raise spec_error(where, path, message)
    if len(path) > MAX_DEPTH:  # also stops a recursive alias ('&a [*a]'); name only the top of the path
        message = f"nested more than {MAX_DEPTH} levels deep (a YAML alias inside its own anchor?)"
        raise spec_error(where, path[:3], message)
    smap.values[path] = where
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in _PLAIN_TAGS:
        shown = node.tag.replace("tag:yaml.org,2002:", "!!")
        raise spec_error(where, path, f"tag '{shown}' is not allowed: a spec is plain data")
    if isinstance(node, yaml.MappingNode):
        return _construct_mapping(node, loader, source, path, smap, budget)
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, loader, source, path + (i,), smap, budget) for i, item in enumerate(node.value)]
    return _construct_scalar(node, loader, where, path)


def _construct_mapping(
    node: yaml.MappingNode, loader: _SpecLoader, source: str, path: tuple, smap: SourceMap, budget: _Budget
) -> dict:
    loader.flatten_mapping(node)  # resolves '<<' merge keys
    out: dict = {}
    for key_node, value_node in node.value:
        key_at = _loc(source, key_node.start_mark)
        if not isinstance(key_node, yaml.ScalarNode):
            raise spec_error(key_at, path, "mapping keys must be scalars")
        key = _construct_scalar(key_node, loader, key_at, path)
        if not isinstance(key, (str, int, float, bool)) or key is None:
            raise spec_error(key_at, path, "mapping keys must be scalars")
        key = str(key) if not isinstance(key, str) else key
        if key in out:
            first = smap.keys[path + (key,)]
            raise spec_error(key_at, path + (key,), f"duplicate key '{key}' (first defined at line {first.line})")
        smap.keys[path + (key,)] = key_at
        out[key] = _construct(value_node, loader, source, path + (key,), smap, budget)
    return out


def _construct_scalar(node: yaml.ScalarNode, loader: _SpecLoader, where: Location, path: tuple) -> Any:
    try:
        return loader.construct_object(node, deep=True)
    except ValueError:  # Python refuses int('...') past 4300 digits
        digits = sum(c.isdigit() for c in node.value)
        raise spec_error(where, path, f"a number with {digits:,} digits is too long for a spec") from None


def parse_yaml(text: str, source: str, budget: _Budget | None = None) -> tuple[Any, SourceMap]:
    """Parse one YAML document safely into plain data and a source map (within ``budget``, if shared)."""
    smap = SourceMap()
    loader = None
    budget = budget or _Budget()
    budget.files += 1
    try:
        loader = _SpecLoader(text)
        loader.source = source
        loader.budget = budget
        node = loader.get_single_node()
        if node is None:
            return None, smap
        return _construct(node, loader, source, (), smap, budget), smap
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark or exc.context_mark
        tag = ""
        if exc.problem and "tag" in exc.problem:
            tag = exc.problem.split("tag", 1)[1].strip(" '").replace("tag:yaml.org,2002:", "!!")
        msg = f"tag '{tag}' is not allowed: a spec is plain data" if tag else str(exc.problem)
        raise spec_error(_loc(source, mark) if mark else Location(source), (), msg) from None
    except yaml.MarkedYAMLError as exc:
        where, message = explain_yaml_error(exc, source)
        raise spec_error(where, (), f"YAML syntax: {message}") from None
    except yaml.reader.ReaderError as exc:
        raise spec_error(_position(text, source, exc.position), (), _reader_message(exc)) from None
    except yaml.YAMLError as exc:  # not expected; say what, never the file's text
        raise spec_error(Location(source), (), f"YAML: {type(exc).__name__}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _position(text: str, source: str, index: int) -> Location:
    """The 1-based line and column of a character offset."""
    line = text.count("\n", 0, index) + 1
    return Location(source, line, index - (text.rfind("\n", 0, index) + 1) + 1)


def _reader_message(exc: yaml.reader.ReaderError) -> str:
    if exc.character in (0, "\0"):
        return "a NUL byte (character #x0000): a spec is text; is this a binary file?"
    return f"character #x{exc.character:04x} is not allowed in YAML (a control character; a spec is text)"


# ---------------------------------------------------------------- YAML syntax errors in plain words


def _mark_text(source: str, mark: yaml.Mark) -> str:
    return f"{source}:{mark.line + 1}:{mark.column + 1}"


_FOUND = {
    "<block mapping start>": "a new 'key: value'",
    "<block sequence start>": "a list item '- '",
    "'-'": "a list item '- '",
    "'<stream end>'": "the end of the file",
    "<stream end>": "the end of the file",
    "'<block end>'": "the end of the block",
}


def _found(problem: str) -> str:
    """What the parser found, in words: the part after 'but found'/'but got'."""
    for sep in ("but found ", "but got "):
        if sep in problem:
            token = problem.split(sep, 1)[1]
            return _FOUND.get(token, _FOUND.get(token.strip("'"), token))
    return problem


def explain_yaml_error(exc: yaml.MarkedYAMLError, source: str) -> tuple[Location, str]:
    """A PyYAML syntax error as (primary position, plain message naming the other position)."""
    problem, context = exc.problem or "invalid YAML", exc.context or ""
    start, end = exc.context_mark, exc.problem_mark
    at = _loc(source, end) if end else (_loc(source, start) if start else Location(source))
    if "'\\t'" in problem:
        return at, "a tab character: YAML indents with spaces only (replace the tab with spaces)"
    if context.startswith("while parsing a flow") and start and end:
        return _explain_flow(context, problem, start, end, source)
    if context.startswith("while parsing a block") and start:
        return at, (
            f"bad indentation: found {_found(problem)} that does not line up with the block that starts at "
            f"{_mark_text(source, start)}; keys of one mapping (and items of one list) must start in the same "
            "column, indented with spaces"
        )
    if "could not find expected ':'" in problem and start:
        return _loc(source, start), (
            "this line has no ':' (a mapping entry is 'key: value', a list item '- value'); "
            "or the line is indented differently from its neighbours"
        )
    if "mapping values are not allowed" in problem:
        return at, (
            "unexpected ':' here: a line indented deeper than the key above it continues that key's value "
            "(check the indentation), or a value containing ': ' needs quotes"
        )
    if context.startswith("while scanning a") and "quoted" in context and start:
        return _loc(source, start), f"this quote is never closed (the problem shows at {_mark_text(source, end)})"
    if "undefined alias" in problem:
        name = problem.rsplit(" ", 1)[-1]
        return at, f"alias *{name.strip(chr(39))} refers to no anchor: define &{name.strip(chr(39))} before using it"
    if "expected a single document" in context:
        return at, "a spec is one YAML document, but a second one starts here ('---')"
    where = f" ({context} at {_mark_text(source, start)})" if context and start else ""
    return at, f"{problem}{where}"


def _explain_flow(context: str, problem: str, start: yaml.Mark, end: yaml.Mark, source: str) -> tuple[Location, str]:
    """A '[...]' or '{...}' that breaks: unclosed when it runs past its line, else a bad item inside."""
    opener, closer = ("[", "]") if "sequence" in context else ("{", "}")
    found = _found(problem)
    if end.line > start.line or found == "the end of the file":
        return _loc(source, start), (
            f"this '{opener}' is never closed: found {found} at {_mark_text(source, end)} "
            f"where ',' or '{closer}' was expected"
        )
    return _loc(source, end), (
        f"unexpected {found} inside the '{opener}...{closer}' that opens at {_mark_text(source, start)}: "
        f"separate items with ',' and quote values that contain ': '"
    )


def _read_text(path: FsPath, shown: str, where: Location, item: tuple, base: bool, budget: _Budget) -> str:
    """Read a spec file as text, refusing what is not one (too big, binary, a device or /proc file)."""
    room = MAX_SPEC_BYTES - budget.bytes  # what the files read before this one left
    try:
        # stat before open: opening a FIFO or a device named *.yaml could block or never end
        if base and (not stat.S_ISREG(os.stat(path).st_mode) or _is_special(path)):
            raise spec_error(where, item, f"{shown} is not a regular file")
        with open(path, "rb") as handle:
            raw = handle.read(room + 1)
            alone = os.fstat(handle.fileno()).st_size > MAX_SPEC_BYTES  # too big even without the files before it
    except FileNotFoundError:
        raise spec_error(where, item, f"file not found: {shown}" if base else "file not found") from None
    except IsADirectoryError:
        raise spec_error(where, item, f"{shown} is a directory, not a spec") from None
    except OSError as exc:
        raise spec_error(where, item, f"cannot read {shown}: {exc.strerror or type(exc).__name__}") from None
    if len(raw) > room:
        raise spec_error(where, item, _too_big(shown, budget, alone))
    budget.bytes += len(raw)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start].decode("utf-8", "replace")
        spot = _position(before, shown, len(before))
        raise spec_error(spot, (), "not UTF-8 text: is this a binary file?") from None


def _too_big(shown: str, budget: _Budget, alone: bool) -> str:
    limit = f"{MAX_SPEC_BYTES // 1024} KiB"
    if alone or not budget.bytes:
        return f"{shown} is larger than {limit}: too big for a spec"
    return (
        f"{shown} takes the spec past {limit} in all, counting the files it extends "
        f"({budget.bytes:,} bytes read before this file): too big for a spec"
    )


def _is_special(path: FsPath) -> bool:
    """Whether a path lies in a kernel file system (/proc, /sys, /dev), whose files are not data."""
    parts = path.resolve().parts
    return len(parts) > 1 and parts[1] in ("proc", "sys", "dev")


def _read_mapping_file(path: FsPath, shown: str, budget: _Budget, where: Location | None, item: tuple) -> tuple:
    """Read one spec file, which must hold a non-empty mapping."""
    text = _read_text(path, shown, where or Location(shown), item, where is not None, budget)
    data, smap = parse_yaml(text, shown, budget)
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


def _merged_source_map(base_data: Any, over_data: Any, base: SourceMap, over: SourceMap) -> SourceMap:
    """Positions of ``deep_merge(base_data, over_data)``: the overriding file's where it has the path, else the base's.

    Whole tables are merged at C speed; only base positions under a subtree ``over`` replaces are dropped.
    """
    replaced: set[tuple] = set()
    _replaced_subtrees(base_data, over_data, (), replaced)
    return SourceMap(
        {**_without(base.values, replaced), **_without(over.values, replaced, below=False)},
        {**_without(base.keys, replaced), **_without(over.keys, replaced, below=False)},
    )


def _replaced_subtrees(base: Any, over: Any, path: tuple, out: set[tuple]) -> None:
    """Collect the paths where ``over`` replaces a non-empty mapping or list of ``base`` (deep_merge's rule)."""
    if isinstance(base, dict) and isinstance(over, dict):
        for key, value in over.items():
            if key in base:
                _replaced_subtrees(base[key], value, path + (key,), out)
    elif isinstance(base, (dict, list)) and base:
        out.add(path)


def _without(table: dict[tuple, Location], replaced: set[tuple], below: bool = True) -> dict[tuple, Location]:
    """``table`` less 'extends' (not in the merged tree) and, if ``below``, the positions under ``replaced``."""
    if ("extends",) in table:
        table = {p: loc for p, loc in table.items() if p[:1] != ("extends",)}
    if below and replaced:
        table = {p: loc for p, loc in table.items() if not any(p[:n] in replaced for n in range(1, len(p)))}
    return table


def load_spec(path: str | FsPath, overrides: Sequence[str] = ()) -> LoadedSpec:
    """Read a spec file, resolve its ``extends`` chain and apply ``--set`` overrides."""
    shown = str(path)
    if "\0" in shown:
        raise spec_error(Location(repr(shown)), (), "a file name cannot contain a NUL character")
    data, smap, files = _load_with_extends(FsPath(path), shown, (), _Budget())
    loaded = LoadedSpec(data, smap, shown, list(dict.fromkeys(files)))
    return apply_overrides(loaded, overrides)


def _load_with_extends(
    path: FsPath, shown: str, chain: tuple, budget: _Budget, where: Location | None = None, item: tuple = ()
) -> tuple[dict, SourceMap, list[str]]:
    real = path.resolve()
    if real in chain:
        names = " -> ".join(str(p) for p in (*chain, real))
        raise spec_error(Location(shown), ("extends",), f"extends cycle: {names}")
    data, smap = _parse_once(path, real, shown, budget, where, item)
    files = [shown]
    extends = data.get("extends")
    if extends is None:
        return data, smap, files
    bases = _extends_entries(path, extends, smap, budget)
    merged: dict = {}
    merged_map = SourceMap()
    for item_path, base_path in bases:
        base_data, base_map, base_files = _load_with_extends(
            base_path, str(base_path), chain + (real,), budget, smap.locate(item_path), item_path
        )
        if merged:
            new = deep_merge(merged, base_data)
            merged_map = _merged_source_map(merged, base_data, merged_map, base_map)
            merged = new
        else:  # the first base as it is: nothing to merge it with
            merged, merged_map = base_data, base_map
        files += base_files
    data = {k: v for k, v in data.items() if k != "extends"}
    new = deep_merge(merged, data)
    return new, _merged_source_map(merged, data, merged_map, smap), files


def _parse_once(
    path: FsPath, real: FsPath, shown: str, budget: _Budget, where: Location | None, item: tuple
) -> tuple[dict, SourceMap]:
    """A spec file's tree, parsed on first use; a reuse counts its values again (merging it costs as much)."""
    if real not in budget.parsed:
        budget.parsed[real] = _read_mapping_file(path, shown, budget, where, item)
        return budget.parsed[real]
    data, smap = budget.parsed[real]
    budget.values += len(smap.values)
    if budget.values > MAX_VALUES:
        message = f"{shown} takes the spec past {MAX_VALUES:,} values in all, counting each time a file is extended"
        raise spec_error(where, item, message)
    return data, smap


def _extends_entries(spec: FsPath, extends: Any, smap: SourceMap, budget: _Budget) -> list[tuple[tuple, FsPath]]:
    """The (item path, file) of each ``extends`` entry: at most MAX_EXTENDS in a spec, each named once."""
    bases = [extends] if isinstance(extends, str) else extends
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise spec_error(smap.locate(("extends",)), ("extends",), "extends must be a file name or a list of file names")
    if budget.extends + len(bases) > MAX_EXTENDS:
        first_over = MAX_EXTENDS - budget.extends
        item = ("extends",) if isinstance(extends, str) else ("extends", first_over)
        before = f", {budget.extends} in the files read before it" if budget.extends else ""
        message = (
            f"too many extends entries ({len(bases)} here{before}): a spec and the files it extends "
            f"list at most {MAX_EXTENDS} in all"
        )
        raise spec_error(smap.locate(item), item, message)
    budget.extends += len(bases)
    out: list[tuple[tuple, FsPath]] = []
    seen: dict[FsPath, int] = {}
    for i, base in enumerate(bases):
        item = ("extends",) if isinstance(extends, str) else ("extends", i)
        base_path = _base_path(spec, base, smap.locate(item), item)
        real = base_path.resolve()
        if real in seen:
            raise spec_error(smap.locate(item), item, f"{base} is already listed at extends[{seen[real]}]")
        seen[real] = i
        out.append((item, base_path))
    return out


def _base_path(spec: FsPath, base: str, where: Location | None, item: tuple) -> FsPath:
    """The file an ``extends`` entry names: a .yaml/.yml file (its link target too), never a special file."""
    if "\0" in base:
        raise spec_error(where, item, "a file name cannot contain a NUL character")
    path = spec.parent / base
    if not base.endswith(YAML_SUFFIXES) or (path.exists() and not str(path.resolve()).endswith(YAML_SUFFIXES)):
        raise spec_error(where, item, f"{base} is not a YAML file: extends takes .yaml or .yml files only")
    return path


_PATH_PART = re.compile(r"([^.\[\]]+)|\[(-?\d+)\]")


def parse_dotted_path(text: str) -> tuple:
    """Split ``model.encoder[2].linear`` into ('model', 'encoder', 2, 'linear')."""
    parts: list = []
    pos = 0
    for match in _PATH_PART.finditer(text):
        between = text[pos : match.start()]
        if between not in ("", "."):
            raise ValueError(f"cannot parse path '{text}'")
        index = match.group(2)
        if index is not None and len(index) > 18:  # beyond any list, and int() refuses 4300+ digits
            raise ValueError(f"index {index[:18]}... is too large")
        parts.append(match.group(1) if match.group(1) is not None else int(index))
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
        if len(path) > MAX_DEPTH:
            issues.append(SpecIssue(where, path[:3], f"the path is more than {MAX_DEPTH} levels deep"))
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
