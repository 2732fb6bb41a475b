"""Checkpoints: written atomically, read with ``weights_only=True`` (no code runs on load)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from sfspec.io import atomic_write

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = 1


class CheckpointError(Exception):
    """A checkpoint is missing, unreadable or not one of ours."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Serialise to memory, then replace ``path`` atomically: a crash never leaves half a file."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **payload}, buffer)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely; a run directory means its latest checkpoint."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint here")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise CheckpointError(f"{path}: cannot read checkpoint: {type(exc).__name__}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an sfspec checkpoint (format {FORMAT})")
    return data
