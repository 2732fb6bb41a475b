"""Torch's exporter and loader messages that are known not to matter here, silenced narrowly."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator


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
