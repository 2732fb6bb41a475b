"""Reading a bundle safely: ``policy.json``, its checksums, verified file bytes, and what is refused.

Nothing here runs an artifact. ``verified_bytes`` returns a file's bytes only when they match the
size and SHA-256 that ``policy.json`` records; callers load *those* bytes, so what runs is exactly
what was hashed (no second read of the file). Only bare file names inside the bundle are accepted,
symbolic links and special files are refused, and no pickled data is ever deserialised except
with ``torch.load(weights_only=True)`` (each format's screen, in ``screen.py``, refuses the rest).

What a checksum proves: the file is the one this ``policy.json`` lists (no mix-up with another
export, no damaged or truncated copy, no single file swapped). It does not prove who wrote the
bundle: whoever can rewrite the files can rewrite ``policy.json`` too. TorchScript and torch.export
artifacts are programs (they may call any torch operator, including ones that read and write
files), so ``check`` runs them only when the user says it trusts the bundle.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

import numpy as np

from sfspec.export.errors import BundleError
from sfspec.export.formats import EXPORT_FORMATS, GOLDEN, GOLDEN_PT, MANIFEST

__all__ = [
    "BUNDLE_FORMAT",
    "GOLDEN",
    "GOLDEN_PT",
    "MANIFEST",
    "bare_name",
    "checksum",
    "load_golden",
    "read_manifest",
    "sha256_hex",
    "verified_bytes",
    "verify_all",
]

BUNDLE_FORMAT = 2  # 2: per-file checksums in policy.json
_MAX_MANIFEST_BYTES = 64 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")
_DTYPES = {"float32", "int64", "int8", "uint8"}


def sha256_hex(data: bytes) -> str:
    """SHA-256 of bytes, as lowercase hex."""
    return hashlib.sha256(data).hexdigest()


def checksum(data: bytes) -> dict[str, Any]:
    """What policy.json records per file."""
    return {"sha256": sha256_hex(data), "bytes": len(data)}


def bare_name(name: Any, where: str) -> str:
    """``name`` if it is a plain file name (no directories, no '..'); BundleError otherwise."""
    if (
        not isinstance(name, str)
        or name in ("", ".", "..")
        or os.path.basename(name) != name
        or any(c in name for c in "/\\\0")
    ):
        raise BundleError(f"policy.json: {where}: {name!r} is not a bare file name inside the bundle")
    return name


def _read_file(bundle: Path, name: str, expected: int | None) -> bytes:
    """The bytes of a regular file directly in the bundle (no links, devices or pipes)."""
    path = bundle / name
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise BundleError(f"{path}: missing (the bundle is incomplete)") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BundleError(f"{path}: a symbolic link; a bundle holds its files itself") from None
        raise BundleError(f"{path}: cannot read it ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise BundleError(f"{path}: not a regular file")
        if expected is not None and info.st_size != expected:
            raise BundleError(
                f"{path}: does not match policy.json's record ({info.st_size} bytes, recorded {expected}): "
                "the file was truncated, altered, or comes from another export"
            )
        limit = _MAX_MANIFEST_BYTES if expected is None else expected
        data = f.read(limit + 1)
    if len(data) > limit:
        raise BundleError(f"{path}: larger than expected ({limit} bytes)")
    return data


def read_manifest(bundle: str | Path) -> dict[str, Any]:
    """``policy.json``, parsed and checked: a BundleError says what is wrong and where."""
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise BundleError(f"{bundle}: not a bundle directory")
    path = bundle / MANIFEST
    data = _read_file(bundle, MANIFEST, None)
    if not data.strip():
        raise BundleError(f"{path}: empty (an interrupted copy?); export the bundle again")
    try:
        meta = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc}); the file is damaged or truncated") from None
    if not isinstance(meta, dict):
        raise BundleError(f"{path}: not a bundle description (a JSON object is expected)")
    _check_manifest(meta, path)
    return meta


def _check_manifest(meta: dict, path: Path) -> None:
    version = meta.get("bundle_format")
    if version is None:
        raise BundleError(f"{path}: written without file checksums (an older sfspec); export the bundle again")
    if version != BUNDLE_FORMAT:
        raise BundleError(f"{path}: bundle format {version!r}; this sfspec reads format {BUNDLE_FORMAT}")
    for key, kind in (("inputs", list), ("outputs", list), ("observations", list), ("actions", list)):
        if not isinstance(meta.get(key), kind) or not meta[key]:
            raise BundleError(f"{path}: '{key}' is missing or empty")
    if not isinstance(meta.get("state"), list):
        raise BundleError(f"{path}: 'state' is missing")
    for obs in meta["observations"]:
        if not (
            isinstance(obs, dict)
            and isinstance(obs.get("name"), str)
            and obs.get("dtype") in _DTYPES
            and isinstance(obs.get("shape"), list)
            and all(isinstance(d, int) and d >= 0 for d in obs["shape"])
        ):
            raise BundleError(f"{path}: observations: malformed entry {obs!r}")
    batch = meta.get("batch")
    if batch != "dynamic" and not (isinstance(batch, int) and batch >= 1):
        raise BundleError(f"{path}: batch: {batch!r} is neither 'dynamic' nor a positive size")
    _check_file_list(meta, path)


def _check_file_list(meta: dict, path: Path) -> None:
    files, sums = meta.get("files"), meta.get("checksums")
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{path}: 'files' lists no artifact; a bundle without a policy file is not a bundle")
    known = EXPORT_FORMATS.names()
    for fmt, name in files.items():
        if fmt not in known:
            raise BundleError(f"{path}: files: unknown format {fmt!r} (known: {', '.join(known)})")
        bare_name(name, f"files.{fmt}")
    if not isinstance(sums, dict):
        raise BundleError(f"{path}: 'checksums' is missing")
    for name in [*files.values(), GOLDEN]:
        entry = sums.get(name)
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("sha256"), str)
            and _SHA256.fullmatch(entry["sha256"])
            and isinstance(entry.get("bytes"), int)
            and entry["bytes"] >= 0
        ):
            raise BundleError(f"{path}: checksums: no valid SHA-256 and size recorded for {name}")
    for name in sums:
        bare_name(name, "checksums")


def verified_bytes(bundle: str | Path, meta: dict, name: str) -> bytes:
    """A bundle file's bytes, after checking their size and SHA-256 against policy.json's record."""
    entry = meta["checksums"].get(name)
    if entry is None:
        raise BundleError(f"{Path(bundle) / name}: policy.json records no checksum for it")
    data = _read_file(Path(bundle), bare_name(name, "file"), entry["bytes"])
    if sha256_hex(data) != entry["sha256"]:
        raise BundleError(
            f"{Path(bundle) / name}: does not match policy.json's record (SHA-256 differs): "
            "the file was altered, damaged, or comes from another export"
        )
    return data


def verify_all(bundle: str | Path, meta: dict) -> dict[str, bytes]:
    """Every file policy.json records, verified: name -> bytes."""
    return {name: verified_bytes(bundle, meta, name) for name in meta["checksums"]}


# ---------------------------------------------------------------- golden data


def load_golden(data: bytes, meta: dict, name: str = GOLDEN) -> dict[str, np.ndarray]:
    """The golden inputs and outputs (``allow_pickle=False``), checked against policy.json's names."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            golden = {key: npz[key] for key in npz.files}
    except Exception as exc:  # zipfile, numpy format and pickle refusals all mean a damaged file
        raise BundleError(f"{name}: not readable golden data ({type(exc).__name__}: {exc})") from None
    needed = [f"batch/in/{n}" for n in meta["inputs"]] + [f"batch/out/{n}" for n in meta["outputs"]]
    if meta["state"]:
        needed += [f"rollout/in/{n}" for n in meta["inputs"]] + [f"rollout/out/{n}" for n in meta["outputs"]]
    missing = [k for k in needed if k not in golden]
    if missing:
        raise BundleError(f"{name}: lacks {missing[0]} (and {len(missing) - 1} more); it does not fit policy.json")
    for group in ("batch", "rollout") if meta["state"] else ("batch",):
        rows = {golden[k].shape[: 2 if group == "rollout" else 1] for k in needed if k.startswith(group + "/")}
        if len(rows) != 1:
            raise BundleError(f"{name}: the {group} arrays disagree on their batch size")
    _check_tolerances(golden, name)
    return golden


def _check_tolerances(golden: dict[str, np.ndarray], name: str) -> None:
    """Near-tie masks must cover their outputs exactly; noise levels must be finite, non-negative scalars."""
    for key, value in golden.items():
        prefix, kind, output = (key.split("/", 2) + ["", ""])[:3]
        if kind == "tie":
            out = golden.get(f"{prefix}/out/{output}")
            if value.dtype != np.bool_ or out is None or value.shape != out.shape:
                raise BundleError(f"{name}: {key} does not match {prefix}/out/{output}")
        elif kind == "noise" and (value.shape != () or value.dtype.kind != "f" or not np.isfinite(value) or value < 0):
            raise BundleError(f"{name}: {key} is not a finite, non-negative number")
