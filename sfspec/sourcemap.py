"""Where each value of a spec tree was written: positions by path (torch-free, imports nothing of sfspec but errors).

Its own module so that the compiler can point at spec positions without importing the spec loader.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sfspec.errors import Location


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
