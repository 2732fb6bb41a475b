"""Errors of the export and of reading bundles (no torch needed to import them)."""

from __future__ import annotations


class ExportError(Exception):
    """An artifact could not be written, or does not match the eager model (the CLI exits with status 1)."""


class BundleError(ExportError):
    """A bundle is incomplete, damaged or altered, or loading one of its files would run code it carries."""


class ObservationError(ValueError):
    """Observations given to ``PolicyRunner.act`` do not match the bundle's layout (shape, dtype, keys, values)."""
