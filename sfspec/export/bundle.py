"""Write a policy bundle (ONNX, TorchScript, torch.export) and refuse it unless every artifact agrees.

A bundle directory holds ``policy.onnx``, ``policy.pt``, ``policy.pt2``, ``policy.json`` (the
observation and action layout, state names, versions, and the size and SHA-256 of every file) and
``golden_io.npz`` (inputs and the outputs every artifact must reproduce, including a recurrent
rollout with a reset in the middle; ``golden_io.pt`` holds the same for C++).

The bundle is built in a temporary directory beside the target and renamed into place only once
the parity gate has passed and every file is on disk: a reader sees the old bundle or the new one,
never a mix, and a failed export (a full disk, a parity failure) leaves the old bundle as it was.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sfspec import __version__
from sfspec.compiler.model import ActorCritic
from sfspec.compiler.spaces import describe_space
from sfspec.export.artifact import Artifact, known_harmless_warnings
from sfspec.export.check import check_bundle
from sfspec.export.errors import BundleError, ExportError
from sfspec.export.integrity import BUNDLE_FORMAT, FILES, GOLDEN, GOLDEN_PT, MANIFEST, checksum
from sfspec.export.parity import (
    ATOL,
    NOISE_FACTOR,
    RTOL,
    Group,
    Reference,
    check_parity,
    golden_arrays,
    make_group,
)
from sfspec.export.policy import DeployPolicy
from sfspec.export.samples import example_inputs, parity_cases, recurrent_rollout
from sfspec.io import current_umask, fsync_dir

__all__ = ["FORMATS", "Artifact", "BundleError", "ExportError", "ExportReport", "check_bundle", "export_bundle"]

FORMATS = ("onnx", "torchscript", "pt2")
BUNDLE_NAMES = {*FILES.values(), GOLDEN, GOLDEN_PT, MANIFEST}


@dataclass
class ExportReport:
    """What was written and how closely each artifact matched."""

    out_dir: Path
    files: list[str]
    worst: dict[str, float] = field(default_factory=dict)  # artifact -> worst absolute error against eager
    near_ties: dict[str, list[str]] = field(default_factory=dict)  # artifact -> discrete near-ties (not failures)
    reference: str = ""  # what the artifacts were measured against


def weights_sha256(model: ActorCritic) -> str:
    """A hash of every parameter and buffer (names, shapes and values)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------- writing artifacts


def _write_bytes(path: Path, data: bytes) -> bytes:
    """Write a new file in the staging directory (it is renamed into place as a whole later)."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return data


def _write_torchscript(policy: DeployPolicy, example: tuple, path: Path) -> bytes:
    with torch.no_grad():
        scripted = torch.jit.trace(policy, example, check_trace=False, strict=False)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    return _write_bytes(path, buffer.getvalue())


def _dynamic_shapes(policy: DeployPolicy, example: tuple, batch: str | int) -> tuple | None:
    if batch != "dynamic":
        return None
    dim = torch.export.Dim("batch", min=1, max=1 << 20)
    return (tuple({0: dim} for _ in example),)  # one entry: forward's *inputs


def _exported_program(policy: DeployPolicy, example: tuple, batch: str | int):
    with torch.no_grad():
        return torch.export.export(
            policy, example, dynamic_shapes=_dynamic_shapes(policy, example, batch), strict=False
        )


def _write_pt2(policy: DeployPolicy, example: tuple, batch: str | int, path: Path) -> bytes:
    program = _exported_program(policy, example, batch)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return _write_bytes(path, buffer.getvalue())


def _write_onnx(
    policy: DeployPolicy, example: tuple, batch: str | int, opset: int, legacy: bool, metadata: dict, path: Path
) -> bytes:
    import onnx

    tmp = path.with_suffix(".onnx.partial")
    kwargs: dict[str, Any] = {
        "input_names": policy.input_names,
        "output_names": policy.output_names,
        "opset_version": opset,
    }
    with torch.no_grad():
        if legacy:
            axes = {n: {0: "batch"} for n in policy.input_names + policy.output_names} if batch == "dynamic" else None
            torch.onnx.export(policy, example, str(tmp), dynamo=False, dynamic_axes=axes, **kwargs)
        else:
            program = _exported_program(policy, example, batch)
            onnx_program = torch.onnx.export(program, example, dynamo=True, verbose=False, **kwargs)
            onnx_program.save(str(tmp))
    model = onnx.load(str(tmp))
    tmp.unlink()
    onnx.checker.check_model(model)
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    return _write_bytes(path, model.SerializeToString())


def _layout_metadata(policy: DeployPolicy, example: tuple) -> dict[str, Any]:
    model = policy.model
    observations = []
    for key, tensor in zip(policy.obs_keys, example):
        info = model.inputs[key]
        entry = {
            "name": key,
            "shape": list(info.space.shape),
            "dtype": str(tensor.dtype).replace("torch.", ""),
            "space": describe_space(info.space),
            "kind": info.kind,
            "normalized": policy.model.preprocessor.normalizer(key) is not None,
        }
        if hasattr(info.space, "low"):
            entry["low"] = _jsonable(info.space.low)
            entry["high"] = _jsonable(info.space.high)
        if key == model.mask_key:
            entry["role"] = "action_mask"
        observations.append(entry)
    actions = []
    for name, part in zip(policy.output_names, model.layout.parts):
        entry = {"name": name, "space": describe_space(part.space), "kind": part.kind, "shape": list(part.space.shape)}
        if part.kind == "gaussian":
            bounds = policy.head.bounds
            entry.update(
                {
                    "low": list(part.low),
                    "high": list(part.high),
                    "bounds": bounds,
                    "mapping": {
                        "clip": "mean clipped to [low, high]",
                        "tanh": "low + (tanh(mean) + 1) / 2 * (high - low)",
                        "none": "the mean, unbounded",
                    }[bounds],
                }
            )
        else:
            entry["mapping"] = "argmax" if part.kind != "bernoulli" else "probability > 0.5"
        actions.append(entry)
    return {
        "observations": observations,
        "actions": actions,
        "state": [
            {"input": f"{s.name}_in", "output": f"{s.name}_out", "shape": ["batch", s.layers, s.hidden]}
            for s in policy.slots
        ],
        "reset": "reset" if policy.slots else None,
        "inputs": policy.input_names,
        "outputs": policy.output_names,
    }


def _jsonable(array) -> Any:
    values = np.asarray(array, dtype=np.float64)
    return [None if not math.isfinite(v) else v for v in values.ravel().tolist()] if values.size <= 64 else "large"


# ---------------------------------------------------------------- the bundle


def _metadata(policy: DeployPolicy, spec: dict, example: tuple, opset: int, batch, legacy_onnx: bool) -> dict:
    """policy.json's fields known before any file is written (the ONNX file embeds them too)."""
    import onnx
    import onnxscript

    return {
        "bundle_format": BUNDLE_FORMAT,
        "sfspec_version": __version__,
        "spec_sha256": hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest(),
        "weights_sha256": weights_sha256(policy.model),
        "torch_version": torch.__version__,
        "onnx_version": onnx.__version__,
        "onnxscript_version": onnxscript.__version__,
        "exporter": "torch.onnx (TorchScript-based, legacy)" if legacy_onnx else "torch.onnx dynamo (torch.export)",
        "opset": opset,
        "batch": batch,
        "deterministic": True,
        "with_value": policy.with_value,
        "env_id": spec["env"]["id"],
        "spec": spec,
        **_layout_metadata(policy, example),
    }


def _write_artifacts(policy, example, formats, batch, opset, legacy_onnx, metadata, staging) -> dict[str, bytes]:
    """Each format's file in the staging directory: file name -> the bytes written."""
    writers = {
        "torchscript": lambda p: _write_torchscript(policy, example, p),
        "pt2": lambda p: _write_pt2(policy, example, batch, p),
        "onnx": lambda p: _write_onnx(policy, example, batch, opset, legacy_onnx, metadata, p),
    }
    blobs = {}
    for fmt in formats:
        try:
            blobs[FILES[fmt]] = writers[fmt](staging / FILES[fmt])
        except OSError:
            raise  # a write failure (full disk, permissions): reported as such by export_bundle
        except Exception as exc:
            raise ExportError(f"{fmt} export failed: {type(exc).__name__}: {exc}") from exc
    return blobs


def _gate_groups(policy: DeployPolicy, reference: Reference, fixed: int | None) -> tuple[list[Group], list[Group]]:
    """(every group the gate judges, the groups recorded as golden data)."""
    cases = parity_cases(policy, fixed_batch=fixed)
    groups = [make_group(reference, f"case {i}", [case]) for i, case in enumerate(cases)]
    golden = [make_group(reference, "golden batch", [parity_cases(policy, samples=64, fixed_batch=fixed)[0]])]
    if policy.slots:
        rows = recurrent_rollout(policy, batch=fixed or 4)
        golden.append(make_group(reference, "rollout", rows))
        groups.append(make_group(reference, "closed-loop rollout", rows, closed_loop=True))
    return groups + golden, golden


def _golden_files(policy: DeployPolicy, golden: list[Group], staging: Path) -> dict[str, bytes]:
    data: dict[str, np.ndarray] = {}
    for prefix, group in zip(("batch", "rollout"), golden):
        data.update(golden_arrays(prefix, policy, group))
    buffer = io.BytesIO()
    np.savez(buffer, **data)
    blobs = {GOLDEN: _write_bytes(staging / GOLDEN, buffer.getvalue())}
    # The same data for C++ (LibTorch reads torch.save's format with torch::jit::pickle_load).
    for_cpp: dict[str, Any] = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in data.items()}
    for_cpp.update(input_names="\n".join(policy.input_names), output_names="\n".join(policy.output_names))
    buffer = io.BytesIO()
    torch.save(for_cpp, buffer)
    blobs[GOLDEN_PT] = _write_bytes(staging / GOLDEN_PT, buffer.getvalue())
    return blobs


def _build(policy: DeployPolicy, spec: dict, staging: Path, formats, opset, batch, legacy_onnx) -> ExportReport:
    """Every file of the bundle in ``staging``, the parity gate passed; policy.json last."""
    example = example_inputs(policy, 2 if batch == "dynamic" else int(batch))
    metadata = _metadata(policy, spec, example, opset, batch, legacy_onnx)
    with known_harmless_warnings():
        blobs = _write_artifacts(policy, example, formats, batch, opset, legacy_onnx, metadata, staging)
        artifacts = [Artifact(fmt, staging / FILES[fmt], policy.input_names, blobs[FILES[fmt]]) for fmt in formats]
    reference = Reference(policy, [x.numpy() for x in example])
    groups, golden = _gate_groups(policy, reference, None if batch == "dynamic" else int(batch))
    result = check_parity(policy, artifacts, groups, reference)
    blobs.update(_golden_files(policy, golden, staging))
    metadata["files"] = {fmt: FILES[fmt] for fmt in formats}
    metadata["checksums"] = {name: checksum(data) for name, data in blobs.items()}
    metadata["parity_worst_abs_error"] = result.worst
    metadata["parity"] = {
        "reference": result.reference,
        "noise_factor": NOISE_FACTOR,
        "floor": {"atol": ATOL, "rtol": RTOL},
        "near_ties": {fmt: len(found) for fmt, found in result.near_ties.items()},
    }
    _write_bytes(staging / MANIFEST, (json.dumps(metadata, indent=2) + "\n").encode())
    files = [FILES[fmt] for fmt in formats] + [GOLDEN, GOLDEN_PT, MANIFEST]
    return ExportReport(staging, files, result.worst, result.near_ties, result.reference)


def export_bundle(
    model: ActorCritic,
    spec: dict,
    out_dir: str | Path,
    formats: tuple[str, ...] = FORMATS,
    opset: int = 18,
    batch: str | int = "dynamic",
    with_value: bool = False,
    legacy_onnx: bool = False,
) -> ExportReport:
    """Write the bundle and run the parity gate; raise ExportError (old bundle untouched) if anything fails."""
    policy = DeployPolicy(model.cpu().eval(), with_value).eval()
    out_dir = Path(out_dir)
    _check_target(out_dir)
    staging = None
    try:
        staging = _make_staging(out_dir)
        report = _build(policy, spec, staging, formats, opset, batch, legacy_onnx)
        _swap_into_place(staging, out_dir)
    except OSError as exc:
        raise ExportError(_write_failure(exc, out_dir)) from None
    finally:
        if staging is not None and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    report.out_dir = out_dir
    return report


# ---------------------------------------------------------------- replacing the target directory


def _check_target(out_dir: Path) -> None:
    """Refuse to replace anything but an earlier bundle (or an empty directory)."""
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise ExportError(f"{out_dir}: exists and is not a directory; choose another --out")
    if not out_dir.is_dir():
        return
    try:
        names = os.listdir(out_dir)
    except OSError as exc:
        raise ExportError(f"{out_dir}: cannot read it ({exc.strerror})") from None
    foreign = sorted(n for n in names if n not in BUNDLE_NAMES and not n.endswith((".tmp", ".partial")))
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise ExportError(
            f"{out_dir} holds files that are not a bundle's ({shown}); not replacing it: choose another --out"
        )


def _make_staging(out_dir: Path) -> Path:
    """A fresh directory beside the target, with the mode a plain mkdir would give."""
    parent = out_dir.absolute().parent
    for folder in (parent, *parent.parents):
        if folder.exists() and not folder.is_dir():
            raise ExportError(f"cannot write the bundle {out_dir}: {folder} is not a directory")
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=parent))
    os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes 0700
    return staging


def _swap_into_place(staging: Path, out_dir: Path) -> None:
    """Rename the finished bundle to ``out_dir``; an earlier bundle there is removed only afterwards."""
    target = out_dir.absolute()
    if not target.exists():
        os.rename(staging, target)
    else:
        old = target.parent / f".{target.name}.old-{os.getpid()}-{staging.name[-8:]}"
        os.rename(target, old)
        try:
            os.rename(staging, target)
        except OSError:
            os.rename(old, target)  # put the earlier bundle back
            raise
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(target.parent)


def _write_failure(exc: OSError, out_dir: Path) -> str:
    where = f" ({exc.filename})" if exc.filename else ""
    message = f"cannot write the bundle {out_dir}: {exc.strerror or exc}{where}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        message += "; free some space and export again"
    return message + ("; the earlier bundle there is unchanged" if out_dir.is_dir() else "")
