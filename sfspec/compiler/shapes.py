"""Walk layer lists: shape inference (torch-free) and module building share one path."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from sfspec.compiler.registry import LAYERS, LayerBuilder, Shape

if TYPE_CHECKING:
    from torch import nn


class ShapeError(Exception):
    """A layer cannot take the shape it is given; ``path`` points at the layer in the spec."""

    def __init__(self, path: tuple, message: str):
        self.path = path
        self.message = message
        super().__init__(message)


def parse_layer_item(item: Any) -> tuple[str, dict]:
    """Split a validated layer-list item into its name and its arguments (defaults applied)."""
    if isinstance(item, str):
        name, raw = item, None
    else:
        ((name, raw),) = item.items()
    builder = LAYERS.get(name)
    args = builder.defaults()
    if isinstance(raw, dict):
        args.update(raw)
    elif raw is not None:
        args[builder.primary] = raw
    return name, args


@dataclass(frozen=True)
class LayerCall:
    """What a builder gets: its arguments, its input shape, and where it is in the spec."""

    name: str
    args: dict
    in_shape: Shape
    path: tuple
    section: str

    def fail(self, reason: str) -> NoReturn:
        """Raise a shape error naming this layer, its input shape and the reason."""
        raise ShapeError(self.path, f"{self.name} cannot take input shape {format_shape(self.in_shape)}: {reason}")

    def need_rank(self, *ranks: int, hint: str = "") -> None:
        """Fail unless the input has one of ``ranks`` axes (batch excluded)."""
        if len(self.in_shape) not in ranks:
            want = " or ".join(RANK_NAMES.get(r, f"{r}-D") for r in ranks)
            got = RANK_NAMES.get(len(self.in_shape), f"{len(self.in_shape)}-D")
            self.fail(f"expects {want}, got {got}{hint}")

    def infer_list(self, key: str, shape: Shape) -> Shape | None:
        """Infer through a nested layer list held in argument ``key``."""
        return infer_layers(self.args[key], shape, self.path + (self.name, key), self.section)

    def build_list(self, key: str, shape: Shape) -> tuple[nn.Module, Shape]:
        """Build a nested layer list held in argument ``key``."""
        return build_layers(self.args[key], shape, self.path + (self.name, key), self.section)


RANK_NAMES = {0: "a scalar", 1: "a vector (features,)", 2: "tokens (tokens, features)", 3: "an image (C, H, W)"}


def format_shape(shape: Shape | None) -> str:
    """Shapes as users read them: ``(3, 84, 84)``."""
    if shape is None:
        return "(?)"
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _call(name: str, args: dict, shape: Shape, path: tuple, section: str) -> tuple[LayerBuilder, LayerCall]:
    builder = LAYERS.get(name)
    if section not in builder.sections:
        allowed = ", ".join(f"model.{s}" for s in sorted(builder.sections))
        kind = "a recurrent layer" if builder.recurrent else "a layer"
        raise ShapeError(path, f"'{name}' is {kind} allowed only in {allowed}")
    return builder, LayerCall(name, args, tuple(shape), path, section)


def _infer(builder: LayerBuilder, call: LayerCall) -> Shape | None:
    if builder.infer is None:
        return None
    out = tuple(builder.infer(call))
    if any(not isinstance(d, int) or d <= 0 for d in out):
        call.fail(f"it would produce shape {format_shape(out)}")
    return out


def infer_layer(item: Any, shape: Shape, path: tuple, section: str) -> Shape | None:
    """Output shape of one layer, or None where only building the module can tell (plugins)."""
    return _infer(*_call(*parse_layer_item(item), shape, path, section))


def infer_layers(items: list, shape: Shape | None, path: tuple, section: str) -> Shape | None:
    """Output shape of a layer list; None once an unknown shape is reached."""
    for i, item in enumerate(items):
        if shape is None:
            return None
        shape = infer_layer(item, shape, path + (i,), section)
    return shape


def build_layer(item: Any, shape: Shape, path: tuple, section: str) -> tuple[nn.Module, Shape, LayerBuilder]:
    """Build one layer's module and return it with its output shape and builder."""
    name, args = parse_layer_item(item)
    module, out = build_parsed(name, args, shape, path, section)
    return module, out, LAYERS.get(name)


def build_parsed(name: str, args: dict, shape: Shape, path: tuple, section: str) -> tuple[nn.Module, Shape]:
    """Build a layer given by name and arguments (defaults applied); returns the module and its output shape."""
    builder, call = _call(name, args, shape, path, section)
    out = _infer(builder, call)
    module = builder.build(call)
    if out is None:
        out = _probe_shape(module, shape, call)
    return module, out


def build_layers(items: list, shape: Shape, path: tuple, section: str) -> tuple[nn.Module, Shape]:
    """Build a feed-forward layer list as one ``nn.Sequential``."""
    from torch import nn

    modules = []
    for i, item in enumerate(items):
        module, shape, _ = build_layer(item, shape, path + (i,), section)
        modules.append(module)
    return nn.Sequential(*modules), shape


def _probe_shape(module: nn.Module, shape: Shape, call: LayerCall) -> Shape:
    """Find a plugin layer's output shape by running it on one zero input."""
    import torch

    try:
        with torch.no_grad():
            out = module(torch.zeros((1, *shape)))
    except Exception as exc:  # a plugin's own error: report it at the layer
        call.fail(f"{type(exc).__name__}: {exc}")
    if not isinstance(out, torch.Tensor):
        call.fail(f"it returned {type(out).__name__}, expected a tensor")
    return tuple(out.shape[1:])


def conv_out(size: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> int:
    """Output length of a convolution or pooling along one axis."""
    return math.floor((size + 2 * padding - dilation * (kernel - 1) - 1) / stride + 1)
