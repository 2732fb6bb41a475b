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

import numpy as np

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
    """No external data files, no NaN weights; the file's embedded metadata must agree with policy.json."""
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise BundleError(f"{name}: not a readable ONNX model ({type(exc).__name__})") from None
    tensors = _onnx_tensors(model.graph)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in tensors):
        raise BundleError(f"{name}: refers to external data files; a bundle's ONNX model must hold its weights")
    for tensor in tensors:
        try:
            values = numpy_helper.to_array(tensor)
        except Exception as exc:  # a tensor whose bytes do not fit its type or shape
            raise BundleError(f"{name}: tensor {tensor.name!r} is unreadable ({type(exc).__name__})") from None
        _refuse_nan(values, name, tensor.name or "a constant")
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


def _refuse_nan(values: np.ndarray, name: str, what: str) -> None:
    """A NaN weight turns every decision it reaches into argmax(NaN) = 0, which golden data cannot tell from right."""
    if values.dtype.kind in "fc" and np.isnan(values).any():
        raise BundleError(f"{name}: its weight {what!r} holds NaN values; no trained policy does")


# torch.export.pt2_archive (torch 2.13): what torch.export.save writes and load_pt2 reads. Weight and
# constant files are named by the model's payload configs; ``data/weights/<model>.pt`` and
# ``data/constants/<model>.pt`` (the legacy format) are unpickled without weights_only, so they,
# like any name the configs do not list, are refused.
_PT2_FIXED = {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id"}
_PT2_MODEL = re.compile(r"models/([^/]+)\.json")
_PT2_PAYLOADS = (
    ("data/weights/", "{}_weights_config.json", "weight_"),
    ("data/constants/", "{}_constants_config.json", "tensor_"),
)
_PT2_FLOATS = {6: "f2", 7: "f4", 8: "f8"}  # torch._export.serde.schema.ScalarType: HALF, FLOAT, DOUBLE


def screen_pt2(data: bytes, meta: dict, name: str) -> None:
    """A torch.export archive may hold only graph JSON and the raw tensors its configs list: no pickles, no code.

    ``torch.export.load`` (torch 2.13) unpickles with ``weights_only=False`` every payload marked
    ``use_pickle``, custom and opaque objects, legacy-format files (``data/weights/<model>.pt``),
    and sample inputs that fail the weights-only load; it also loads AOTInductor shared libraries.
    sfspec writes none of these.
    """
    archive, inner = _pt2_entries(data, name)
    models = [m.group(1) for m in map(_PT2_MODEL.fullmatch, inner) if m]
    if not models:
        raise BundleError(f"{name}: holds no models/<name>.json; not a torch.export archive")
    allowed = {*_PT2_FIXED, *(f"models/{m}.json" for m in models), *(f"data/sample_inputs/{m}.pt" for m in models)}
    order = ">" if "byteorder" in inner and archive.read(inner["byteorder"]).strip() == b"big" else "<"
    for folder, config_name, prefix in _PT2_PAYLOADS:
        for model in models:
            config = folder + config_name.format(model)
            allowed |= _screen_payloads(archive, inner, config, prefix, order, name)
    for entry, full in inner.items():
        if entry not in allowed:
            raise BundleError(f"{name}: holds {full!r}; sfspec loads only graphs and the raw tensors listed with them")
    for model in models:
        entry = f"data/sample_inputs/{model}.pt"
        _weights_only_loads(archive.read(inner[entry]) if entry in inner else b"", name, entry)


def _pt2_entries(data: bytes, name: str) -> tuple[zipfile.ZipFile, dict[str, str]]:
    """The archive and its entries without their one top-level folder (torch's reader strips it): short -> full."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise BundleError(f"{name}: not a readable torch.export archive ({exc})") from None
    for info in archive.infolist():  # torch.export.save stores entries; a compressed one could inflate without bound
        if info.compress_type != zipfile.ZIP_STORED or info.file_size > len(data):
            raise BundleError(f"{name}: {info.filename} is compressed; a torch.export archive stores its entries as is")
    roots = {entry.split("/", 1)[0] for entry in names}
    if len(roots) != 1 or any("/" not in entry for entry in names):
        raise BundleError(f"{name}: its entries are not all in one top-level folder; not a torch.export archive")
    if len({entry.lower() for entry in names}) != len(names):
        # torch's zip reader may pick another of two like-named entries than the one screened here
        raise BundleError(f"{name}: holds two entries named alike (ignoring case); refusing an ambiguous archive")
    return archive, {entry.split("/", 1)[1]: entry for entry in names}


def _screen_payloads(
    archive: zipfile.ZipFile, inner: dict[str, str], config: str, prefix: str, order: str, name: str
) -> set[str]:
    """A payload config and the raw tensor files it lists (no NaN weights): the entries they make allowed."""
    if config not in inner:
        raise BundleError(f"{name}: lacks {config}; sfspec loads only archives whose configs list every tensor")
    folder = config.rsplit("/", 1)[0] + "/"
    allowed = {config}
    for path, dtype in _payload_files(archive.read(inner[config]), prefix, name, config).items():
        if folder + path not in inner:
            raise BundleError(f"{name}: {config} lists {path}, which the archive lacks")
        allowed.add(folder + path)
        if dtype is not None:
            raw = archive.read(inner[folder + path])
            whole = len(raw) - len(raw) % dtype.itemsize
            _refuse_nan(np.frombuffer(raw[:whole], dtype.newbyteorder(order)), name, path)
    return allowed


def _payload_files(raw: bytes, prefix: str, name: str, entry: str) -> dict[str, np.dtype | None]:
    """The raw tensor files a payload config lists (path -> float dtype, None for other types); pickles refused."""
    try:
        payloads = list(json.loads(raw)["config"].items())
    except (ValueError, KeyError, TypeError, AttributeError):
        raise BundleError(f"{name}: {entry} is malformed") from None
    files: dict[str, np.dtype | None] = {}
    for key, payload in payloads:
        tensor = payload.get("tensor_meta") if isinstance(payload, dict) else None
        if not isinstance(tensor, dict) or payload.get("use_pickle") is not False:
            raise BundleError(f"{name}: {entry}: '{key}' is stored as pickled data; sfspec never unpickles a bundle")
        path = payload.get("path_name")
        if not isinstance(path, str) or not re.fullmatch(re.escape(prefix) + r"\d+", path):
            raise BundleError(f"{name}: {entry}: '{key}' is stored in {path!r}, not a raw {prefix}N tensor file")
        dtype = tensor.get("dtype")
        files[path] = np.dtype(_PT2_FLOATS[dtype]) if isinstance(dtype, int) and dtype in _PT2_FLOATS else None
    return files


def _weights_only_loads(raw: bytes, name: str, entry: str) -> None:
    """torch.export.load falls back to an unrestricted unpickler when this fails: fail first."""
    import torch

    try:
        torch.load(io.BytesIO(raw), weights_only=True)
    except Exception:
        raise BundleError(f"{name}: {entry} is not plain tensor data; sfspec never unpickles a bundle") from None
