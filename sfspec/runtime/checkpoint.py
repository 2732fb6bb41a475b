"""Checkpoints: written atomically, read with ``weights_only=True`` (no code runs on load), checksummed.

The file is a ``torch.save`` archive of ``{"format", "sha256", "payload"}``: ``payload`` holds the
checkpoint itself (another ``torch.save`` archive) as bytes, and ``sha256`` is its digest, so a flipped
bit anywhere in the saved state is caught on load instead of silently changing the weights.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import torch

from sfspec.io import atomic_write

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = 2
LEGACY_FORMAT = 1  # no checksum; still read


class CheckpointError(Exception):
    """A checkpoint is missing, unreadable, corrupt or not one of ours."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Serialise to memory with a checksum, then replace ``path`` atomically: a crash never leaves half a file."""
    inner = io.BytesIO()
    torch.save(payload, inner)
    data = inner.getvalue()
    outer = io.BytesIO()
    blob = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    torch.save({"format": FORMAT, "sha256": hashlib.sha256(data).hexdigest(), "payload": blob}, outer)
    atomic_write(path, lambda f: f.write(outer.getvalue()))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely and verify its checksum; a run directory means its latest checkpoint."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint here")
    return parse_checkpoint(path.read_bytes(), path, map_location)


def parse_checkpoint(data: bytes, path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint file's bytes, verified and read safely (``path`` names it in errors).

    Data-parallel runs send rank 0's file to the other ranks as bytes; they read it with this.
    """
    path = Path(path)
    data = _torch_load(path, data, map_location)
    if isinstance(data, dict) and data.get("format") == LEGACY_FORMAT:
        return data
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("payload"), torch.Tensor):
        raise CheckpointError(f"{path}: not an sfspec checkpoint (format {FORMAT})")
    payload = data["payload"].numpy().tobytes()
    if hashlib.sha256(payload).hexdigest() != data.get("sha256"):
        raise CheckpointError(
            f"{path}: the checkpoint is corrupt (its SHA-256 does not match the one saved with it); "
            "restore it from a copy, or start the run again"
        )
    inner = _torch_load(path, payload, map_location)
    if not isinstance(inner, dict):
        raise CheckpointError(f"{path}: not an sfspec checkpoint (format {FORMAT})")
    return inner


def _torch_load(path: Path, data: bytes, map_location: str | torch.device) -> Any:
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # a truncated, corrupt or foreign file
        raise CheckpointError(f"{path}: cannot read checkpoint: {type(exc).__name__}: {exc}") from None
