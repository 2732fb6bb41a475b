"""The export formats: one registration per format, read by everything that names formats.

A format is its name (in ``--formats``, ``export.formats`` and ``policy.json``'s ``files``), its
file name in a bundle, how to write it, how to load and run it, what to refuse before loading it,
and whether running it executes the bundle author's code (then ``sfspec check`` runs it only with
``--trust``). The spec schema's ``export.formats`` enum and default, the CLI's ``--formats`` and
``--trust`` help, the files a bundle may hold and the backends of ``PolicyRunner`` all come from here.

Torch-free on purpose: the schema is built from this table and ``sfspec validate`` must not import
torch. So the built-in formats name their functions as ``"module:function"`` strings, imported only
when a bundle is written or read; a plugin may pass the functions themselves.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sfspec.compiler.registry import Registry

Hook = Callable[..., Any] | str  # a function, or "module:function" imported on first use

# The files every bundle holds besides its artifacts (no format may take their names).
MANIFEST = "policy.json"
GOLDEN = "golden_io.npz"
GOLDEN_PT = "golden_io.pt"  # the same data for LibTorch (C++); never loaded by sfspec
BATCH_AXIS = "batch"  # the dynamic batch axis's name wherever axes are named (ONNX dim_param, policy.json)


def resolve(hook: Hook) -> Callable[..., Any]:
    """The function a hook names (imported now if it is a ``"module:function"`` string)."""
    if callable(hook):
        return hook
    module, _, name = hook.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class ExportFormat:
    """How one artifact kind is written, screened, loaded and run.

    ``write(policy, example, config, metadata, path) -> bytes`` writes the file (``config`` is the
    ``ExportConfig``, ``metadata`` policy.json's fields known before writing) and returns the bytes
    written. ``load(data, input_names, threads) -> run`` loads verified bytes; ``run(inputs)`` maps a
    list of numpy arrays (in ``input_names`` order) to the outputs. ``threads=None`` leaves process-wide
    thread settings alone. ``screen(data, meta, name)`` raises ``BundleError`` for bytes that loading
    would handle unsafely or that contradict ``policy.json``.
    """

    name: str
    file: str
    title: str  # how messages and help name it ("TorchScript")
    write: Hook
    load: Hook
    screen: Hook | None = None
    runs_code: str = ""  # why running it runs the bundle author's code; non-empty: only with --trust
    default: bool = True  # exported when neither --formats nor the spec's export.formats chooses
    policy_runner: bool = False  # PolicyRunner and ``sfspec eval BUNDLE --backend`` may run it


class FormatRegistry(Registry[ExportFormat]):
    """Formats by name, in registration order (the order of the schema's enum and of a bundle's files)."""

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._items)

    def all(self) -> list[ExportFormat]:
        """Every registered format, in registration order."""
        return list(self._items.values())

    def default_names(self) -> list[str]:
        """What is exported when nothing chooses."""
        return [f.name for f in self.all() if f.default]

    def file_names(self) -> dict[str, str]:
        """Format name -> its file name in a bundle."""
        return {f.name: f.file for f in self.all()}

    def runs_code(self) -> dict[str, str]:
        """Format name -> why running it runs the bundle author's code (formats that need ``--trust``)."""
        return {f.name: f.runs_code for f in self.all() if f.runs_code}

    def bundle_names(self) -> set[str]:
        """Every file name a bundle may hold."""
        return {*(f.file for f in self.all()), MANIFEST, GOLDEN, GOLDEN_PT}

    def runner_backends(self) -> list[str]:
        """The formats ``PolicyRunner`` may run."""
        return [f.name for f in self.all() if f.policy_runner]


EXPORT_FORMATS = FormatRegistry("export format")


def register_format(fmt: ExportFormat, *, force: bool = False) -> ExportFormat:
    """Add a format (the one step a new format needs); its name and file must be new."""
    if not fmt.name or any(c in fmt.name for c in ", "):
        raise ValueError(f"export format {fmt.name!r}: a name must be non-empty, without commas or spaces")
    if fmt.file in ("", ".", "..") or os.path.basename(fmt.file) != fmt.file or "\\" in fmt.file:
        raise ValueError(f"export format '{fmt.name}': file {fmt.file!r} is not a bare file name")
    taken = {f.file: f"format '{f.name}'" for f in EXPORT_FORMATS.all() if f.name != fmt.name}
    taken.update({name: "the bundle itself" for name in (MANIFEST, GOLDEN, GOLDEN_PT)})
    if fmt.file in taken:
        raise ValueError(f"export format '{fmt.name}': the file name {fmt.file!r} is taken by {taken[fmt.file]}")
    return EXPORT_FORMATS.register(fmt.name, fmt, force=force)


register_format(
    ExportFormat(
        name="onnx",
        file="policy.onnx",
        title="ONNX",
        write="sfspec.export.writers:write_onnx",
        load="sfspec.export.artifact:load_onnx",
        screen="sfspec.export.screen:screen_onnx",
        policy_runner=True,  # data: onnxruntime interprets a fixed set of operators, none touching files
    )
)
register_format(
    ExportFormat(
        name="torchscript",
        file="policy.pt",
        title="TorchScript",
        write="sfspec.export.writers:write_torchscript",
        load="sfspec.export.artifact:load_torchscript",
        runs_code="TorchScript is a program; running it may call any torch operator, file I/O included",
        policy_runner=True,
    )
)
register_format(
    ExportFormat(
        name="pt2",
        file="policy.pt2",
        title="torch.export",
        write="sfspec.export.writers:write_pt2",
        load="sfspec.export.artifact:load_pt2",
        screen="sfspec.export.screen:screen_pt2",
        runs_code="a torch.export program may call any torch operator, file I/O included",
    )
)
