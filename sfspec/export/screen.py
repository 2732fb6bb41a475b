"""Screening an artifact's bytes before any loader sees them: what each format's loader would do unsafely.

Called with bytes already verified against ``policy.json``'s checksums. A format registers its
screen (``ExportFormat.screen``); ONNX and torch.export have one, TorchScript has none (it is a
program either way: it runs only when the user trusts the bundle).
"""

from __future__ import annotations

import io
import json
import re
import zipfile

from sfspec.export.errors import BundleError
from sfspec.export.formats import EXPORT_FORMATS, resolve


def screen_artifact(fmt: str, data: bytes, meta: dict, name: str) -> None:
    """Refuse what a format's loader would do unsafely or what contradicts policy.json (the format's screen)."""
    screen = EXPORT_FORMATS.get(fmt).screen
    if screen is not None:
        resolve(screen)(data, meta, name)


def _onnx_tensors(graph) -> list:
    """Every TensorProto of a graph: initializers and attribute tensors, subgraphs included."""
    out = list(graph.initializer) + [s.values for s in graph.sparse_initializer]
    for node in graph.node:
        for attr in node.attribute:
            out += ([attr.t] if attr.HasField("t") else []) + list(attr.tensors)
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                out += _onnx_tensors(sub)
    return out


def screen_onnx(data: bytes, meta: dict, name: str) -> None:
    """No external data files; the file's embedded metadata must agree with policy.json."""
    import onnx

    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise BundleError(f"{name}: not a readable ONNX model ({type(exc).__name__})") from None
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in _onnx_tensors(model.graph)):
        raise BundleError(f"{name}: refers to external data files; a bundle's ONNX model must hold its weights")
    props = {p.key: p.value for p in model.metadata_props}
    for key in ("weights_sha256", "spec_sha256"):
        if props.get(key) != meta.get(key):
            raise BundleError(f"{name}: its {key} differs from policy.json's (the model comes from another export)")
    for key in ("inputs", "outputs"):
        try:
            same = json.loads(props.get(key, "null")) == meta[key]
        except ValueError:
            same = False
        if not same:
            raise BundleError(f"{name}: its {key} differ from policy.json's")


_PT2_ALLOWED = re.compile(
    r"[^/]+/(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
    r"|models/[^/]+\.json|data/weights/[^/]+|data/constants/[^/]+|data/sample_inputs/[^/]+\.pt)"
)


def screen_pt2(data: bytes, meta: dict, name: str) -> None:
    """A torch.export archive may hold only graph JSON and raw tensors: no pickles, no compiled code.

    ``torch.export.load`` (torch 2.13) unpickles with ``weights_only=False`` every payload marked
    ``use_pickle``, custom and opaque objects, legacy-format files, and sample inputs that fail the
    weights-only load; it also loads AOTInductor shared libraries. sfspec writes none of these.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise BundleError(f"{name}: not a readable torch.export archive ({exc})") from None
    for entry in names:
        if not _PT2_ALLOWED.fullmatch(entry):
            raise BundleError(f"{name}: holds {entry!r}; sfspec loads only graphs and raw tensors from a .pt2")
        if entry.endswith("_config.json") and "/data/" in entry:
            _screen_payload_config(archive.read(entry), name, entry)
        elif "/data/sample_inputs/" in entry:
            _weights_only_loads(archive.read(entry), name, entry)


def _screen_payload_config(raw: bytes, name: str, entry: str) -> None:
    try:
        config = json.loads(raw)["config"]
        payloads = list(config.items())
    except (ValueError, KeyError, TypeError, AttributeError):
        raise BundleError(f"{name}: {entry} is malformed") from None
    for key, payload in payloads:
        if not isinstance(payload, dict) or payload.get("use_pickle") is not False or not payload.get("tensor_meta"):
            raise BundleError(f"{name}: {entry}: '{key}' is stored as pickled data; sfspec never unpickles a bundle")


def _weights_only_loads(raw: bytes, name: str, entry: str) -> None:
    """torch.export.load falls back to an unrestricted unpickler when this fails: fail first."""
    import torch

    try:
        torch.load(io.BytesIO(raw), weights_only=True)
    except Exception:
        raise BundleError(f"{name}: {entry} is not plain tensor data; sfspec never unpickles a bundle") from None
