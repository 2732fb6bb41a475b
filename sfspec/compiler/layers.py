"""Built-in layer builders: each one a schema fragment, a shape rule and a module factory.

Importing this module registers them and does not import torch; the build functions do.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

from sfspec.compiler.registry import Shape, register_layer
from sfspec.compiler.shapes import LayerCall, conv_out

if TYPE_CHECKING:
    from torch import nn

POSITIVE = {"type": "integer", "minimum": 1}
NON_NEGATIVE = {"type": "integer", "minimum": 0}
PAIR = {"oneOf": [POSITIVE, {"type": "array", "items": POSITIVE, "minItems": 2, "maxItems": 2}]}
LAYER_LIST = {"$ref": "#/$defs/layer_list"}
ACTIVATION_NAMES = [
    "relu",
    "elu",
    "tanh",
    "sigmoid",
    "gelu",
    "silu",
    "leaky_relu",
    "selu",
    "softplus",
    "mish",
    "identity",
]


def _nn():  # torch is imported only when a model is built
    from torch import nn

    return nn


def _modules():
    from sfspec.compiler import modules

    return modules


def _pair(value: int | list) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (value[0], value[1])


def _vector_hint(call: LayerCall) -> str:
    return "; add '- flatten' before it" if len(call.in_shape) >= 2 else ""


# ---------------------------------------------------------------- dense and shape layers


def _infer_linear(call: LayerCall) -> Shape:
    call.need_rank(1, 2, hint=_vector_hint(call) if len(call.in_shape) > 2 else "")
    return (*call.in_shape[:-1], call.args["features"])


@register_layer(
    "linear",
    params={"features": {**POSITIVE, "description": "output features"}, "bias": {"type": "boolean", "default": True}},
    required=("features",),
    primary="features",
    infer=_infer_linear,
)
def build_linear(call: LayerCall) -> nn.Module:
    """Fully connected layer over the last axis."""
    return _nn().Linear(call.in_shape[-1], call.args["features"], bias=call.args["bias"])


def _infer_flatten(call: LayerCall) -> Shape:
    return (math.prod(call.in_shape),)


@register_layer("flatten", infer=_infer_flatten)
def build_flatten(call: LayerCall) -> nn.Module:
    """Flatten every axis but the batch."""
    return _nn().Flatten()


def _infer_same(call: LayerCall) -> Shape:
    return call.in_shape


@register_layer(
    "layer_norm", params={"eps": {"type": "number", "exclusiveMinimum": 0, "default": 1e-5}}, infer=_infer_same
)
def build_layer_norm(call: LayerCall) -> nn.Module:
    """Layer normalisation over the last axis."""
    return _nn().LayerNorm(call.in_shape[-1], eps=call.args["eps"])


@register_layer(
    "dropout",
    params={"p": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.1}},
    primary="p",
    infer=_infer_same,
)
def build_dropout(call: LayerCall) -> nn.Module:
    """Dropout (active in training mode only)."""
    return _nn().Dropout(call.args["p"])


def _infer_embedding(call: LayerCall) -> Shape:
    return (*call.in_shape, call.args["dim"])


@register_layer(
    "embedding",
    params={"num": {**POSITIVE, "description": "number of distinct indices"}, "dim": POSITIVE},
    required=("num", "dim"),
    infer=_infer_embedding,
)
def build_embedding(call: LayerCall) -> nn.Module:
    """Embed integer indices (e.g. an observation with ``preprocess: {discrete: index}``)."""
    return _modules().IndexEmbedding(call.args["num"], call.args["dim"])


def _infer_tokens(call: LayerCall) -> Shape:
    call.need_rank(2, 3)
    channels, *spatial = call.in_shape
    return (math.prod(spatial), channels)


@register_layer("to_tokens", infer=_infer_tokens)
def build_to_tokens(call: LayerCall) -> nn.Module:
    """(C, H, W) or (C, L) feature maps to tokens (H*W, C) for attention."""
    return _modules().ToTokens()


def _infer_token_mean(call: LayerCall) -> Shape:
    call.need_rank(2)
    return (call.in_shape[1],)


@register_layer("token_mean", infer=_infer_token_mean)
def build_token_mean(call: LayerCall) -> nn.Module:
    """Average tokens (T, D) to one vector (D,)."""
    return _modules().TokenMean()


# ---------------------------------------------------------------- activations

_ACTIVATIONS = {
    "relu": ("ReLU", {}),
    "elu": ("ELU", {"alpha": {"type": "number", "default": 1.0}}),
    "tanh": ("Tanh", {}),
    "sigmoid": ("Sigmoid", {}),
    "gelu": ("GELU", {}),
    "silu": ("SiLU", {}),
    "leaky_relu": ("LeakyReLU", {"negative_slope": {"type": "number", "default": 0.01}}),
    "selu": ("SELU", {}),
    "softplus": ("Softplus", {"beta": {"type": "number", "exclusiveMinimum": 0, "default": 1.0}}),
    "mish": ("Mish", {}),
    "identity": ("Identity", {}),
}


def activation(name: str, **kwargs) -> nn.Module:
    """An activation module by its spec name."""
    if name == "tanh":
        return fast_tanh_class()()
    cls_name, _ = _ACTIVATIONS[name]
    return getattr(_nn(), cls_name)(**kwargs)


@functools.cache
def fast_tanh_class() -> type:
    """``nn.Tanh`` computing 2 * sigmoid(2x) - 1 while training on the CPU: this CPU build's tanh
    kernel costs about 2.6 ns per element, sigmoid 0.45 (benchmarks/rsl_rl.py). The result differs
    from torch.tanh by at most 2.4e-7; the gradient is tanh's own. Evaluation, export, tracing and
    torch.compile (eval mode or a graph being made) see torch.tanh itself.
    """
    import torch

    class _TanhBySigmoid(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x: torch.Tensor) -> torch.Tensor:
            y = torch.sigmoid(x * 2.0).mul_(2.0).sub_(1.0)
            ctx.save_for_backward(y)
            return y

        @staticmethod
        def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
            (y,) = ctx.saved_tensors
            return torch.ops.aten.tanh_backward(grad, y)

    class Tanh(_nn().Tanh):
        """torch's Tanh, with a faster CPU kernel in training mode (see ``fast_tanh_class``)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.training and x.device.type == "cpu" and not _making_graph():
                return _TanhBySigmoid.apply(x)
            return torch.tanh(x)

    return Tanh


def _making_graph() -> bool:
    """True while torch traces, scripts, compiles or exports (graphs get torch.tanh)."""
    import torch

    return (
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
        or torch.onnx.is_in_onnx_export()
    )


def _register_activation(name: str, params: dict) -> None:
    primary = next(iter(params), None)

    def build(call: LayerCall) -> nn.Module:
        return activation(call.name, **call.args)

    register_layer(name, build, params=params, primary=primary, infer=_infer_same, description=f"{name} activation")


for _name, (_, _params) in _ACTIVATIONS.items():
    _register_activation(_name, _params)


# ---------------------------------------------------------------- convolution and pooling

CONV_PARAMS = {
    "channels": POSITIVE,
    "kernel": PAIR,
    "stride": {**PAIR, "default": 1},
    "padding": {"oneOf": [NON_NEGATIVE, {"const": "same"}], "default": 0},
}


def _padding(call: LayerCall, kernel: tuple[int, ...]) -> tuple[int, ...]:
    padding = call.args["padding"]
    if padding == "same":
        if any(k % 2 == 0 for k in kernel):
            call.fail("padding 'same' needs an odd kernel")
        return tuple(k // 2 for k in kernel)
    return tuple(padding for _ in kernel)


def _spatial_out(call: LayerCall, kernel, stride, padding) -> tuple[int, ...]:
    spatial = call.in_shape[1:]
    for size, k, p in zip(spatial, kernel, padding):
        if k > size + 2 * p:
            call.fail(f"kernel {k} is larger than the input ({size}, padding {p})")
    return tuple(conv_out(s, k, st, p) for s, k, st, p in zip(spatial, kernel, stride, padding))


def _image_hint(call: LayerCall) -> str:
    return "; conv2d needs an image observation (C, H, W)" if len(call.in_shape) == 1 else ""


def _infer_conv2d(call: LayerCall) -> Shape:
    call.need_rank(3, hint=_image_hint(call))
    kernel, stride = _pair(call.args["kernel"]), _pair(call.args["stride"])
    return (call.args["channels"], *_spatial_out(call, kernel, stride, _padding(call, kernel)))


@register_layer("conv2d", params=CONV_PARAMS, required=("channels", "kernel"), infer=_infer_conv2d)
def build_conv2d(call: LayerCall) -> nn.Module:
    """2-D convolution over (C, H, W)."""
    kernel = _pair(call.args["kernel"])
    return _nn().Conv2d(
        call.in_shape[0], call.args["channels"], kernel, _pair(call.args["stride"]), _padding(call, kernel)
    )


CONV1D_PARAMS = {**CONV_PARAMS, "kernel": POSITIVE, "stride": {**POSITIVE, "default": 1}}


def _infer_conv1d(call: LayerCall) -> Shape:
    call.need_rank(2, hint="; conv1d needs (channels, length)" if len(call.in_shape) == 1 else "")
    kernel = (call.args["kernel"],)
    return (call.args["channels"], *_spatial_out(call, kernel, (call.args["stride"],), _padding(call, kernel)))


@register_layer("conv1d", params=CONV1D_PARAMS, required=("channels", "kernel"), infer=_infer_conv1d)
def build_conv1d(call: LayerCall) -> nn.Module:
    """1-D convolution over (C, L)."""
    kernel = call.args["kernel"]
    return _nn().Conv1d(call.in_shape[0], call.args["channels"], kernel, call.args["stride"], _padding(call, (kernel,)))


POOL_PARAMS = {"kernel": PAIR, "stride": PAIR, "padding": {**NON_NEGATIVE, "default": 0}}


def _pool_geometry(call: LayerCall) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    kernel = _pair(call.args["kernel"])
    stride = _pair(call.args.get("stride", call.args["kernel"]))
    padding = _pair(call.args["padding"])
    if any(p > k // 2 for p, k in zip(padding, kernel)):
        call.fail("padding must be at most half the kernel")
    return kernel, stride, padding


def _infer_pool(call: LayerCall) -> Shape:
    call.need_rank(3, hint=_image_hint(call))
    kernel, stride, padding = _pool_geometry(call)
    return (call.in_shape[0], *_spatial_out(call, kernel, stride, padding))


@register_layer("maxpool2d", params=POOL_PARAMS, required=("kernel",), primary="kernel", infer=_infer_pool)
def build_maxpool2d(call: LayerCall) -> nn.Module:
    """2-D max pooling (stride defaults to the kernel)."""
    return _nn().MaxPool2d(*_pool_geometry(call))


@register_layer("avgpool2d", params=POOL_PARAMS, required=("kernel",), primary="kernel", infer=_infer_pool)
def build_avgpool2d(call: LayerCall) -> nn.Module:
    """2-D average pooling (stride defaults to the kernel)."""
    return _nn().AvgPool2d(*_pool_geometry(call))


def _infer_adaptive(call: LayerCall) -> Shape:
    call.need_rank(3, hint=_image_hint(call))
    return (call.in_shape[0], *_pair(call.args["size"]))


@register_layer("adaptive_avgpool2d", params={"size": PAIR}, required=("size",), primary="size", infer=_infer_adaptive)
def build_adaptive_avgpool2d(call: LayerCall) -> nn.Module:
    """Average-pool an image to a fixed (H, W)."""
    return _nn().AdaptiveAvgPool2d(_pair(call.args["size"]))


# ---------------------------------------------------------------- macros


def mlp_items(args: dict) -> list:
    """The layers an ``mlp`` stands for."""
    items: list = []
    for i, size in enumerate(args["sizes"]):
        items.append({"linear": size})
        if args["norm"] == "layer_norm":
            items.append("layer_norm")
        if i < len(args["sizes"]) - 1 or args["activate_last"]:
            items.append(args["activation"])
    return items


MLP_PARAMS = {
    "sizes": {"type": "array", "items": POSITIVE, "minItems": 1},
    "activation": {"enum": ACTIVATION_NAMES, "default": "elu"},
    "norm": {"enum": ["none", "layer_norm"], "default": "none"},
    "activate_last": {"type": "boolean", "default": True},
}


def _infer_mlp(call: LayerCall) -> Shape:
    call.need_rank(1, 2, hint=_vector_hint(call))
    from sfspec.compiler.shapes import infer_layers

    return infer_layers(mlp_items(call.args), call.in_shape, call.path + (call.name,), call.section)


@register_layer("mlp", params=MLP_PARAMS, required=("sizes",), primary="sizes", infer=_infer_mlp, expand=mlp_items)
def build_mlp(call: LayerCall) -> nn.Module:
    """Linear layers of the given sizes, each followed by an optional norm and the activation."""
    from sfspec.compiler.shapes import build_layers

    return build_layers(mlp_items(call.args), call.in_shape, call.path + (call.name,), call.section)[0]


def nature_items(args: dict) -> list:
    """The layers a ``nature_cnn`` stands for."""
    return [
        {"conv2d": {"channels": 32, "kernel": 8, "stride": 4}},
        "relu",
        {"conv2d": {"channels": 64, "kernel": 4, "stride": 2}},
        "relu",
        {"conv2d": {"channels": 64, "kernel": 3, "stride": 1}},
        "relu",
        "flatten",
        {"linear": args["features"]},
        "relu",
    ]


def _infer_nature(call: LayerCall) -> Shape:
    call.need_rank(3, hint=_image_hint(call))
    if min(call.in_shape[1:]) < 36:
        call.fail("the Nature CNN needs images of at least 36x36")
    from sfspec.compiler.shapes import infer_layers

    return infer_layers(nature_items(call.args), call.in_shape, call.path + (call.name,), call.section)


@register_layer(
    "nature_cnn",
    params={"features": {**POSITIVE, "default": 512}},
    primary="features",
    infer=_infer_nature,
    expand=nature_items,
)
def build_nature_cnn(call: LayerCall) -> nn.Module:
    """The DQN Nature CNN (Mnih et al. 2015) with its final linear layer."""
    from sfspec.compiler.shapes import build_layers

    return build_layers(nature_items(call.args), call.in_shape, call.path + (call.name,), call.section)[0]


def impala_items(args: dict) -> list:
    """The layers an ``impala_cnn`` stands for."""
    items: list = []
    for channels in args["channels"]:
        block = ["relu", {"conv2d": {"channels": channels, "kernel": 3, "padding": 1}}] * 2
        items += [
            {"conv2d": {"channels": channels, "kernel": 3, "padding": 1}},
            {"maxpool2d": {"kernel": 3, "stride": 2, "padding": 1}},
            {"residual": block},
            {"residual": block},
        ]
    return items + ["relu", "flatten", {"linear": args["features"]}, "relu"]


IMPALA_PARAMS = {
    "channels": {"type": "array", "items": POSITIVE, "minItems": 1, "default": [16, 32, 32]},
    "features": {**POSITIVE, "default": 256},
}


def _infer_impala(call: LayerCall) -> Shape:
    call.need_rank(3, hint=_image_hint(call))
    from sfspec.compiler.shapes import infer_layers

    return infer_layers(impala_items(call.args), call.in_shape, call.path + (call.name,), call.section)


@register_layer("impala_cnn", params=IMPALA_PARAMS, infer=_infer_impala, expand=impala_items)
def build_impala_cnn(call: LayerCall) -> nn.Module:
    """The IMPALA CNN (Espeholt et al. 2018): per stage conv, max-pool, two residual blocks."""
    from sfspec.compiler.shapes import build_layers

    return build_layers(impala_items(call.args), call.in_shape, call.path + (call.name,), call.section)[0]


# ---------------------------------------------------------------- composites


def _infer_residual(call: LayerCall) -> Shape | None:
    out = call.infer_list("layers", call.in_shape)
    if out is not None and out != call.in_shape:
        call.fail(f"its layers must keep the shape for the skip connection, but produce {out}")
    return out


@register_layer(
    "residual",
    params={"layers": {**LAYER_LIST, "description": "layers whose output is added to their input"}},
    required=("layers",),
    primary="layers",
    infer=_infer_residual,
)
def build_residual(call: LayerCall) -> nn.Module:
    """x + layers(x)."""
    body, out = call.build_list("layers", call.in_shape)
    if out != call.in_shape:
        call.fail(f"its layers must keep the shape for the skip connection, but produce {out}")
    return _modules().Residual(body)


REPEAT_PARAMS = {"times": POSITIVE, "layers": LAYER_LIST}


def _infer_repeat(call: LayerCall) -> Shape | None:
    shape: Shape | None = call.in_shape
    for _ in range(call.args["times"]):
        shape = call.infer_list("layers", shape) if shape is not None else None
    return shape


@register_layer("repeat", params=REPEAT_PARAMS, required=("times", "layers"), infer=_infer_repeat)
def build_repeat(call: LayerCall) -> nn.Module:
    """The same layer list, repeated (each copy with its own weights)."""
    modules, shape = [], call.in_shape
    for _ in range(call.args["times"]):
        module, shape = call.build_list("layers", shape)
        modules.append(module)
    return _nn().Sequential(*modules)


ATTENTION_PARAMS = {
    "heads": {**POSITIVE, "default": 4},
    "dropout": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.0},
}


def _infer_attention(call: LayerCall) -> Shape:
    call.need_rank(2, hint="; use '- to_tokens' to turn a feature map into tokens" if len(call.in_shape) == 3 else "")
    if call.in_shape[1] % call.args["heads"]:
        call.fail(f"{call.in_shape[1]} features do not split into {call.args['heads']} heads")
    return call.in_shape


@register_layer("self_attention", params=ATTENTION_PARAMS, primary="heads", infer=_infer_attention)
def build_self_attention(call: LayerCall) -> nn.Module:
    """Multi-head self-attention over the token axis of (T, D)."""
    return _modules().SelfAttention(call.in_shape[1], call.args["heads"], call.args["dropout"])


# ---------------------------------------------------------------- recurrent (core only)

RNN_PARAMS = {"hidden": POSITIVE, "layers": {**POSITIVE, "default": 1}}


def _infer_rnn(call: LayerCall) -> Shape:
    call.need_rank(1, hint=_vector_hint(call))
    return (call.args["hidden"],)


def _build_rnn(call: LayerCall) -> nn.Module:
    """Multi-layer GRU or LSTM; its state (h, and c for an LSTM) is carried by the core."""
    cls = _nn().GRU if call.name == "gru" else _nn().LSTM
    return cls(call.in_shape[0], call.args["hidden"], call.args["layers"])


for _name in ("gru", "lstm"):
    register_layer(
        _name,
        _build_rnn,
        params=RNN_PARAMS,
        required=("hidden",),
        primary="hidden",
        sections={"core"},
        recurrent=True,
        infer=_infer_rnn,
        description=f"multi-layer {_name.upper()} (core only); the core carries its state",
    )
