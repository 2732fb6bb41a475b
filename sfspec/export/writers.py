"""Writing a bundle's files into its staging directory: each chosen format's artifact, and the golden data.

Each writer returns the bytes it wrote, so the checksums and the parity gate see exactly what is
on disk. The built-in formats' writers have the signature ``ExportFormat.write`` documents.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sfspec.export.config import ExportConfig
from sfspec.export.errors import ExportError
from sfspec.export.formats import BATCH_AXIS, EXPORT_FORMATS, GOLDEN, GOLDEN_PT, resolve
from sfspec.export.parity import Group, golden_arrays
from sfspec.export.policy import DeployPolicy


def write_bytes(path: Path, data: bytes) -> bytes:
    """Write a new file in the staging directory (it is renamed into place as a whole later)."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return data


def write_artifacts(
    policy: DeployPolicy, example: tuple, config: ExportConfig, metadata: dict, staging: Path
) -> dict[str, bytes]:
    """Each chosen format's file in the staging directory: file name -> the bytes written."""
    blobs = {}
    for name in config.formats:
        fmt = EXPORT_FORMATS.get(name)
        try:
            blobs[fmt.file] = resolve(fmt.write)(policy, example, config, metadata, staging / fmt.file)
        except OSError:
            raise  # a write failure (full disk, permissions): reported as such by export_bundle
        except Exception as exc:
            raise ExportError(f"{name} export failed: {type(exc).__name__}: {exc}") from exc
    return blobs


def write_golden(policy: DeployPolicy, golden: list[Group], staging: Path) -> dict[str, bytes]:
    """``golden_io.npz`` (and ``golden_io.pt`` for C++) from the gate's golden groups: file name -> bytes."""
    data: dict[str, np.ndarray] = {}
    for prefix, group in zip(("batch", "rollout"), golden):
        data.update(golden_arrays(prefix, policy, group))
    buffer = io.BytesIO()
    np.savez(buffer, **data)
    blobs = {GOLDEN: write_bytes(staging / GOLDEN, buffer.getvalue())}
    # The same data for C++ (LibTorch reads torch.save's format with torch::jit::pickle_load).
    for_cpp: dict[str, Any] = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in data.items()}
    for_cpp.update(input_names="\n".join(policy.input_names), output_names="\n".join(policy.output_names))
    buffer = io.BytesIO()
    torch.save(for_cpp, buffer)
    blobs[GOLDEN_PT] = write_bytes(staging / GOLDEN_PT, buffer.getvalue())
    return blobs


def write_torchscript(policy: DeployPolicy, example: tuple, config: ExportConfig, metadata: dict, path: Path) -> bytes:
    """``policy.pt``: the policy traced to TorchScript (LibTorch loads it from C++)."""
    with torch.no_grad():
        scripted = torch.jit.trace(policy, example, check_trace=False, strict=False)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    return write_bytes(path, buffer.getvalue())


def write_pt2(policy: DeployPolicy, example: tuple, config: ExportConfig, metadata: dict, path: Path) -> bytes:
    """``policy.pt2``: a ``torch.export`` program."""
    program = _exported_program(policy, example, config.batch)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return write_bytes(path, buffer.getvalue())


def write_onnx(policy: DeployPolicy, example: tuple, config: ExportConfig, metadata: dict, path: Path) -> bytes:
    """``policy.onnx``: checked with onnx.checker, with policy.json's fields in its metadata_props."""
    import onnx

    tmp = path.with_suffix(".onnx.partial")
    kwargs: dict[str, Any] = {
        "input_names": policy.input_names,
        "output_names": policy.output_names,
        "opset_version": config.opset,
    }
    with torch.no_grad():
        if config.legacy_onnx:
            names = policy.input_names + policy.output_names
            axes = {n: {0: BATCH_AXIS} for n in names} if config.batch == "dynamic" else None
            torch.onnx.export(policy, example, str(tmp), dynamo=False, dynamic_axes=axes, **kwargs)
        else:
            program = _exported_program(policy, example, config.batch)
            onnx_program = torch.onnx.export(program, example, dynamo=True, verbose=False, **kwargs)
            onnx_program.rename_axes(_batch_axis_names(onnx_program.model.graph.inputs))
            onnx_program.save(str(tmp))
    model = onnx.load(str(tmp))
    tmp.unlink()
    onnx.checker.check_model(model)
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    return write_bytes(path, model.SerializeToString())


def _batch_axis_names(graph_inputs) -> dict[str, str]:
    """The exported program's batch symbol (``s15``, say: torch.export keeps no Dim name) -> ``batch``."""
    firsts = [getattr(x.shape[0], "value", None) for x in graph_inputs if x.shape]  # an int when the batch is fixed
    symbols = {first for first in firsts if isinstance(first, str)}
    return {symbol: BATCH_AXIS for symbol in symbols}


def _dynamic_shapes(example: tuple, batch: str | int) -> tuple | None:
    if batch != "dynamic":
        return None
    dim = torch.export.Dim(BATCH_AXIS, min=1, max=1 << 20)
    return (tuple({0: dim} for _ in example),)  # one entry: forward's *inputs


def _exported_program(policy: DeployPolicy, example: tuple, batch: str | int):
    with torch.no_grad():
        return torch.export.export(policy, example, dynamic_shapes=_dynamic_shapes(example, batch), strict=False)
