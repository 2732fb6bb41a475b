"""Run one exported policy file (ONNX, TorchScript or torch.export) on numpy inputs."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from sfspec.export.errors import BundleError


class _DropMessages(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


@contextlib.contextmanager
def known_harmless_warnings() -> Iterator[None]:
    """Silence, narrowly, what torch's exporters and loaders print that is known not to matter here."""
    # torch.onnx lists the torchvision operators it cannot register when torchvision is absent;
    # sfspec's graphs never use them.
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    torchvision = _DropMessages("torchvision is not installed")
    registration.addFilter(torchvision)
    try:
        with warnings.catch_warnings():
            # TorchScript is a deliberate bundle format (LibTorch loads it); torch marks its jit API deprecated.
            warnings.filterwarnings(
                "ignore", r"`torch\.jit\.(trace|trace_method|save|load)` is deprecated", DeprecationWarning
            )
            # torch 2.13's own pytree code copies a TreeSpec through a deprecated LeafSpec check.
            warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning)
            # nn.GRU / nn.LSTM rebuild their _flat_weights list (the same parameters) during export,
            # and check input sizes in Python while traced; the parity gate checks the resulting programs.
            warnings.filterwarnings(
                "ignore",
                r"The tensor attributes (\S+\._flat_weights\[\d+\](, )?)+ were assigned during export",
                UserWarning,
            )
            warnings.filterwarnings(
                "ignore", "Converting a tensor to a Python boolean", module=r"torch\.nn\.modules\.rnn"
            )
            # The legacy ONNX exporter warns that an LSTM exported at batch > 1 needs its initial
            # states as inputs: a bundle's states (h_in, c_in) are inputs, at any batch size.
            warnings.filterwarnings(
                "ignore", "Exporting a model to ONNX with a batch_size other than 1, with a variable length with LSTM"
            )
            yield
    finally:
        registration.removeFilter(torchvision)


class Artifact:
    """One exported policy file, loaded from its bytes (read from ``path`` when none are given)."""

    def __init__(self, kind: str, path: str | Path, input_names: list[str], data: bytes | None = None, threads=1):
        self.kind, self.path, self.input_names = kind, Path(path), list(input_names)
        data = self.path.read_bytes() if data is None else data
        if kind == "onnx":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
            self.feed_order = [self.input_names.index(i.name) for i in self.session.get_inputs()]
            return
        import torch

        with known_harmless_warnings():
            if kind == "torchscript":
                self.module = torch.jit.load(io.BytesIO(data))
            elif kind == "pt2":
                self.module = torch.export.load(io.BytesIO(data)).module()
            else:
                raise ValueError(f"unknown artifact kind {kind!r}")

    def __call__(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        if self.kind == "onnx":
            return self.session.run(None, {self.input_names[i]: inputs[i] for i in self.feed_order})
        import torch

        with torch.no_grad():
            out = self.module(*[torch.from_numpy(np.ascontiguousarray(x)) for x in inputs])
        out = out if isinstance(out, (tuple, list)) else (out,)
        return [o.numpy() for o in out]


def load_artifact(kind: str, name: str, data: bytes, input_names: list[str], threads: int = 1) -> Artifact:
    """An Artifact from verified bytes; a loader's failure becomes a BundleError naming the file."""
    try:
        return Artifact(kind, name, input_names, data, threads)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise BundleError(f"{name}: cannot be loaded as {kind} ({type(exc).__name__}: {first})") from None
