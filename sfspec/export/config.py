"""The ``export:`` section as a typed config; defaults come from the spec schema (one source of truth)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from sfspec.export.formats import EXPORT_FORMATS
from sfspec.spec.schema import schema_default


class ExportConfigError(ValueError):
    """A setting of the export is not valid; ``field`` names it (the CLI turns it into ``--field``)."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem


SPEC_KEYS = ("formats", "opset", "batch", "with_value")  # the fields a spec's export: section sets


@dataclass(frozen=True)
class ExportConfig:
    """What to export and how, resolved from the spec with the schema's defaults."""

    formats: tuple[str, ...]
    opset: int  # ONNX opset
    batch: str | int  # "dynamic" or a fixed batch size
    with_value: bool  # also output the critic's value
    legacy_onnx: bool = False  # the TorchScript-based ONNX exporter (a command-line choice, not in the spec)

    def __post_init__(self) -> None:
        object.__setattr__(self, "formats", _checked_formats(self.formats))
        object.__setattr__(self, "batch", _checked_batch(self.batch))

    @classmethod
    def from_spec(cls, spec: dict | None = None) -> ExportConfig:
        """Fill every field from ``spec['export']``, else the schema default (no spec: the defaults)."""
        given = (spec or {}).get("export") or {}
        return cls(**{key: given.get(key, schema_default("export", key)) for key in SPEC_KEYS})

    def override(self, **changes: Any) -> ExportConfig:
        """A copy with every field given (not None) replaced, and checked."""
        return replace(self, **{key: value for key, value in changes.items() if value is not None})


def _checked_formats(formats: Sequence[str]) -> tuple[str, ...]:
    """Registered format names, as a tuple; ExportConfigError names the first unknown one."""
    if isinstance(formats, str):
        raise ExportConfigError("formats", f"a list of format names, not the string {formats!r}")
    known = EXPORT_FORMATS.names()
    for name in formats:
        if name not in known:
            raise ExportConfigError("formats", f"unknown format '{name}'; choose from {', '.join(known)}")
    return tuple(formats)


def _checked_batch(batch: Any) -> str | int:
    """'dynamic' or a positive batch size (an integer, or its digits as text)."""
    if batch == "dynamic":
        return batch
    if isinstance(batch, bool) or not str(batch).isdigit() or int(batch) < 1:
        raise ExportConfigError("batch", f"'{batch}' is neither 'dynamic' nor a positive batch size")
    return int(batch)
