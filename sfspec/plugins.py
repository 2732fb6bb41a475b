"""Plugins: Python modules that register layers and components, loaded by explicit request only.

Sources: installed entry points in the group ``sfspec.plugins`` and ``--plugin module.name`` on
the command line. A spec never names code to import.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

ENTRY_POINT_GROUP = "sfspec.plugins"


_LOADED: set[str] = set()  # modules loaded as plugins (a registry, like the layer registry)


def loaded_plugins() -> frozenset[str]:
    """Names of the modules loaded as plugins so far."""
    return frozenset(_LOADED)


def _declared(group: str) -> bool:
    """Whether a distribution on ``sys.path`` may declare entry points in ``group`` (a text search, ~5 ms)."""
    marker = f"[{group}]"
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:  # a zip file or a missing directory: let importlib.metadata decide
            if entry and os.path.isfile(entry):
                return True
            continue
        for name in names:
            if name.endswith((".dist-info", ".egg-info")):
                try:
                    with open(os.path.join(entry or ".", name, "entry_points.txt"), encoding="utf-8") as handle:
                        if marker in handle.read():
                            return True
                except (OSError, UnicodeDecodeError):
                    continue
    return False


class PluginError(Exception):
    """A plugin could not be loaded."""


def load_plugins(modules: Sequence[str] = (), use_entry_points: bool = True) -> list[str]:
    """Import plugin modules (and call entry-point functions); return what was loaded."""
    loaded = []
    if use_entry_points and _declared(ENTRY_POINT_GROUP):
        from importlib.metadata import entry_points  # its import and scan cost ~50 ms per command: only when needed

        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                target = ep.load()
            except Exception as exc:
                raise PluginError(f"plugin entry point '{ep.name}' ({ep.value}) failed to load: {exc}") from exc
            if callable(target):  # an entry point may name a register() function
                target()
            loaded.append(ep.value)
            _LOADED.add(ep.value.split(":", 1)[0])
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise PluginError(f"--plugin {name}: cannot import it: {exc}") from exc
        loaded.append(name)
        _LOADED.add(name)
    return loaded
