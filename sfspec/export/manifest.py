"""``policy.json``: what a bundle says about itself (versions, hashes, layouts, files, checksums, parity).

Its fields known before any file is written (``manifest_fields``) are also embedded in the ONNX
file; ``complete_manifest`` adds the files, their checksums and the parity gate's record.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import numpy as np
import torch

from sfspec import __version__
from sfspec.compiler.model import ActorCritic
from sfspec.compiler.spaces import describe_space
from sfspec.export.config import ExportConfig
from sfspec.export.formats import BATCH_AXIS, EXPORT_FORMATS
from sfspec.export.integrity import BUNDLE_FORMAT, checksum
from sfspec.export.parity import ParityResult
from sfspec.export.policy import DeployPolicy

_LEGACY_EXPORTER = "torch.onnx (TorchScript-based, legacy)"
_ACTION_MAPPINGS = {
    "clip": "mean clipped to [low, high]",
    "tanh": "low + (tanh(mean) + 1) / 2 * (high - low)",
    "none": "the mean, unbounded",
}


def weights_sha256(model: ActorCritic) -> str:
    """A hash of every parameter and buffer (names, shapes and values)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def manifest_fields(policy: DeployPolicy, spec: dict, example: tuple, config: ExportConfig) -> dict[str, Any]:
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
        "exporter": _LEGACY_EXPORTER if config.legacy_onnx else "torch.onnx dynamo (torch.export)",
        "opset": config.opset,
        "batch": config.batch,
        "deterministic": True,
        "with_value": policy.with_value,
        "env_id": spec["env"]["id"],
        "trained_with": trained_with(spec),
        "spec": spec,
        **_layout(policy, example),
    }


def trained_with(spec: dict) -> dict[str, Any]:
    """What training did to the plant that the bundle never does (for traceability): ranges, noise, delays."""
    env = spec["env"]
    return {key: env.get(key) or {} for key in ("randomize", "noise", "delay")}


def complete_manifest(fields: dict, formats: tuple[str, ...], blobs: dict[str, bytes], parity: ParityResult) -> dict:
    """The whole policy.json: ``fields`` plus the artifacts' file names, every file's checksum and the gate's record."""
    files = EXPORT_FORMATS.file_names()
    return {
        **fields,
        "files": {fmt: files[fmt] for fmt in formats},
        "checksums": {name: checksum(data) for name, data in blobs.items()},
        "parity_worst_abs_error": parity.worst,
        "parity": parity.record(),
    }


def _layout(policy: DeployPolicy, example: tuple) -> dict[str, Any]:
    """Observation and action layouts, state tensors, input and output names."""
    return {
        "observations": [_observation(policy, key, tensor) for key, tensor in zip(policy.obs_keys, example)],
        "actions": [_action(policy, name, part) for name, part in zip(policy.output_names, policy.model.layout.parts)],
        "state": [
            {
                "input": f"{s.name}_in",
                "output": f"{s.name}_out",
                "shape": [BATCH_AXIS, *s.shape],
                "dtype": "float32",
                "kind": s.kind,
                "initial": "zeros",
                "on_reset": s.on_reset,
            }
            for s in policy.slots
        ],
        "reset": "reset" if policy.slots else None,
        "control": _control(policy),
        "inputs": policy.input_names,
        "outputs": policy.output_names,
    }


def _control(policy: DeployPolicy) -> dict[str, Any]:
    """The control period, and how a controller drives the states (what a robot integrator needs to loop)."""
    dt = policy.interface.cfg.dt if policy.interface is not None else None
    return {
        "dt": dt,
        "rate_hz": (1.0 / dt) if dt else None,
        "loop": (
            "each step: feed every state output back as its input; on an episode's first step set reset = 1 "
            "(states may then hold anything, zeros at start)"
            if policy.slots
            else "stateless: one call per step"
        ),
    }


def _observation(policy: DeployPolicy, key: str, tensor: torch.Tensor) -> dict[str, Any]:
    model = policy.model
    info = policy.obs_inputs[key]
    entry = {
        "name": key,
        "shape": list(info.space.shape),
        "dtype": str(tensor.dtype).replace("torch.", ""),
        "space": describe_space(info.space),
        "kind": info.kind,
        "normalized": model.preprocessor.normalizer(key) is not None,
    }
    if hasattr(info.space, "low"):
        entry["low"] = _jsonable(info.space.low)
        entry["high"] = _jsonable(info.space.high)
    if key == model.mask_key:
        entry["role"] = "action_mask"
    interface = policy.interface
    if interface is not None and key in interface.cfg.observations:
        transform = interface.cfg.observations[key]
        entry["transform"] = {**_transform(transform), "formula": "clip((x - offset) * scale, low, high)"}
        entry["history"] = transform.history
        if transform.names:
            entry["names"] = list(transform.names)
    return entry


def _transform(t) -> dict[str, Any]:
    """scale, offset and clip bounds of an interface transform (lists: one value broadcasts)."""
    clip = {"low": list(t.clip[0]), "high": list(t.clip[1])} if t.clip is not None else None
    return {"scale": list(t.scale), "offset": list(t.offset), "clip": clip}


def _action(policy: DeployPolicy, name: str, part) -> dict[str, Any]:
    entry = {"name": name, "space": describe_space(part.space), "kind": part.kind, "shape": list(part.space.shape)}
    entry["dtype"] = "float32" if part.kind == "gaussian" else "int64"  # as DeployPolicy returns them
    if part.kind == "gaussian":
        bounds = policy.head.bounds
        entry.update(
            {"low": list(part.low), "high": list(part.high), "bounds": bounds, "mapping": _ACTION_MAPPINGS[bounds]}
        )
    else:
        entry["mapping"] = "argmax" if part.kind != "bernoulli" else "probability > 0.5"
    interface = policy.interface
    if interface is not None and interface.cfg.actions is not None:
        robot = interface.action_space
        entry["network"] = {"low": entry.pop("low"), "high": entry.pop("high")}  # the head's bounds, network units
        entry.update({"space": describe_space(robot), "low": _jsonable(robot.low), "high": _jsonable(robot.high)})
        formula = "clip(offset + scale * a, low, high)" if interface.cfg.actions.clip else "offset + scale * a"
        entry["transform"] = {**_transform(interface.cfg.actions), "formula": formula + ", a the network's action"}
        if interface.cfg.actions.names:
            entry["names"] = list(interface.cfg.actions.names)
    return entry


def _jsonable(array) -> Any:
    values = np.asarray(array, dtype=np.float64)
    return [None if not math.isfinite(v) else v for v in values.ravel().tolist()] if values.size <= 64 else "large"
