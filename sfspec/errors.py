"""Spec errors that point into the file: ``file:line:col: dotted.path: message``."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Path = tuple  # a path into the spec tree: keys (str) and list indices (int)


@dataclass(frozen=True)
class Location:
    """Where a value came from: a file position, or a command-line override."""

    source: str
    line: int | None = None  # 1-based
    col: int | None = None  # 1-based

    def __str__(self) -> str:
        if self.line is None:
            return self.source
        return f"{self.source}:{self.line}:{self.col}"


def format_path(path: Sequence) -> str:
    """Render a spec path as users write it: ``model.encoder.inputs.camera[2]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<root>"


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A ' (did you mean 'x'?)' suffix for the closest choice, or ''."""
    close = difflib.get_close_matches(str(word), sorted(set(map(str, choices))), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


@dataclass(frozen=True)
class SpecIssue:
    """One problem in a spec: where, which value, what is wrong."""

    location: Location | None
    path: tuple
    message: str

    def __str__(self) -> str:
        where = f"{self.location}: " if self.location is not None else ""
        what = f"{format_path(self.path)}: " if self.path else ""  # the whole file has no path to name
        return f"{where}{what}{self.message}"


class SpecError(Exception):
    """One or more problems in a spec; the CLI prints them and exits with status 2."""

    def __init__(self, issues: SpecIssue | Sequence[SpecIssue]):
        self.issues: list[SpecIssue] = [issues] if isinstance(issues, SpecIssue) else list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


def spec_error(location: Location | None, path: Sequence, message: str) -> SpecError:
    """Build a SpecError holding a single issue."""
    return SpecError(SpecIssue(location, tuple(path), message))
