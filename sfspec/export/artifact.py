"""Loading and running one exported policy file, of any registered format, on numpy inputs.

One loader for every caller: the parity gate loads the bytes it has just written (``Artifact``);
``sfspec check`` and ``PolicyRunner`` open a bundle's file (``open_artifact``: checksum verified,
screened, then loaded). Each format's ``load`` is registered in ``sfspec.export.formats``.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sfspec.export.errors import BundleError
from sfspec.export.formats import EXPORT_FORMATS, resolve
from sfspec.export.integrity import verified_bytes
from sfspec.export.quiet import known_harmless_warnings
from sfspec.export.screen import screen_artifact

Run = Callable[[list[np.ndarray]], list[np.ndarray]]


class Artifact:
    """One exported policy file, loaded from its bytes (read from ``path`` when none are given).

    ``threads``: intra-op threads for the artifact's runtime; None leaves torch's process-wide
    setting alone (the export's own parity gate) and gives onnxruntime one thread.
    """

    def __init__(
        self, kind: str, path: str | Path, input_names: list[str], data: bytes | None = None, threads: int | None = None
    ):
        self.kind, self.path, self.input_names = kind, Path(path), list(input_names)
        data = self.path.read_bytes() if data is None else data
        self._run: Run = resolve(EXPORT_FORMATS.get(kind).load)(data, self.input_names, threads)

    def __call__(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """The outputs for positional inputs (in ``input_names`` order)."""
        return self._run(inputs)


def load_artifact(kind: str, name: str, data: bytes, input_names: list[str], threads: int | None = 1) -> Artifact:
    """An Artifact from verified bytes; a loader's failure becomes a BundleError naming the file."""
    try:
        return Artifact(kind, name, input_names, data, threads)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise BundleError(f"{name}: cannot be loaded as {kind} ({type(exc).__name__}: {first})") from None


def open_artifact(bundle: str | Path, meta: dict, fmt: str, threads: int = 1, data: bytes | None = None) -> Artifact:
    """A bundle's ``fmt`` file: verified against policy.json (unless ``data`` already is), screened, loaded."""
    name = meta["files"].get(fmt)
    if name is None:
        raise BundleError(f"{bundle} has no {fmt} file (it holds {', '.join(meta['files'])})")
    data = verified_bytes(bundle, meta, name) if data is None else data
    screen_artifact(fmt, data, meta, name)
    return load_artifact(fmt, name, data, meta["inputs"], threads)


# ---------------------------------------------------------------- the built-in formats' loaders


def load_onnx(data: bytes, input_names: list[str], threads: int | None) -> Run:
    """An onnxruntime (CPU) session; its inputs are fed by name."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 1
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    order = [input_names.index(i.name) for i in session.get_inputs()]
    return lambda inputs: session.run(None, {input_names[i]: inputs[i] for i in order})


def load_torchscript(data: bytes, input_names: list[str], threads: int | None) -> Run:
    """A TorchScript module (a program: run only for bundles the user trusts)."""
    import torch

    _torch_threads(threads)
    with known_harmless_warnings():
        return _torch_run(torch.jit.load(io.BytesIO(data)))


def load_pt2(data: bytes, input_names: list[str], threads: int | None) -> Run:
    """A torch.export program's module (screened first: the archive holds no pickles)."""
    import torch

    _torch_threads(threads)
    with known_harmless_warnings():
        return _torch_run(torch.export.load(io.BytesIO(data)).module())


def _torch_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _torch_run(module) -> Run:
    import torch

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            out = module(*[torch.from_numpy(np.ascontiguousarray(x)) for x in inputs])
        out = out if isinstance(out, (tuple, list)) else (out,)
        return [o.numpy() for o in out]

    return run
