"""Registries: builders and components by name (the only global mutable state in sfspec).

Torch-free on purpose: the spec schema is assembled from these registries, and validating a
spec must not import torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from sfspec.errors import did_you_mean

if TYPE_CHECKING:
    from torch import nn

    from sfspec.compiler.shapes import LayerCall

T = TypeVar("T")
Shape = tuple  # a shape without the batch axis


class Registry(Generic[T]):
    """Objects registered by name; ``register`` works as a call or a decorator."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str | None = None, obj: T | None = None, *, force: bool = False) -> Any:
        """Register ``obj`` under ``name``; without ``obj``, return a decorator."""

        def add(item: T) -> T:
            key = name or getattr(item, "name", None) or getattr(item, "__name__", None)
            if not isinstance(key, str) or not key:
                raise ValueError(f"{self.kind}: a registered object needs a name")
            if key in self._items and not force:
                raise KeyError(f"{self.kind} '{key}' is already registered (pass force=True to replace it)")
            self._items[key] = item
            return item

        return add if obj is None else add(obj)

    def get(self, name: str) -> T:
        """The object registered under ``name``; a KeyError suggests the closest name."""
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} '{name}'{did_you_mean(name, self._items)}") from None

    def unregister(self, name: str) -> None:
        """Remove ``name`` (for tests and for replacing plugins)."""
        self._items.pop(name, None)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


SECTIONS = frozenset({"encoder", "core", "decoder"})


@dataclass(frozen=True)
class LayerBuilder:
    """How to validate, shape-infer and build one layer kind named in a spec.

    ``params`` is the JSON Schema ``properties`` of the layer's arguments; ``primary`` names the
    argument written inline (``- linear: 64``). ``infer(call)`` returns the output shape without
    torch; ``build(call)`` returns the ``nn.Module``. Without ``infer``, the compiler finds the
    output shape by running the built module on a zero input. ``expand(args)``, for a layer that
    stands for a fixed list of simpler ones (``mlp``), returns that list: estimates (layer count,
    parameters) read it instead of building anything.
    """

    name: str
    build: Callable[[LayerCall], nn.Module]
    infer: Callable[[LayerCall], Shape] | None = None
    params: dict = field(default_factory=dict)
    required: tuple[str, ...] = ()
    primary: str | None = None
    sections: frozenset = SECTIONS
    recurrent: bool = False
    description: str = ""
    expand: Callable[[dict], list] | None = None

    def defaults(self) -> dict:
        """Argument defaults declared in the schema fragment."""
        return {k: v["default"] for k, v in self.params.items() if isinstance(v, dict) and "default" in v}


LAYERS: Registry[LayerBuilder] = Registry("layer")
ENCODERS: Registry[type] = Registry("encoder")
CORES: Registry[type] = Registry("core")
DECODERS: Registry[type] = Registry("decoder")
ACTOR_CRITICS: Registry[type] = Registry("actor_critic")

# The registry a spec section's ``custom:`` name is looked up in.
COMPONENT_REGISTRIES: dict[str, Registry[type]] = {
    "encoder": ENCODERS,
    "core": CORES,
    "decoder": DECODERS,
    "model": ACTOR_CRITICS,
}


def register_layer(
    name: str,
    build: Callable[[LayerCall], nn.Module] | None = None,
    *,
    infer: Callable[[LayerCall], Shape] | None = None,
    params: dict | None = None,
    required: tuple[str, ...] | list[str] = (),
    primary: str | None = None,
    sections: frozenset | set | tuple = SECTIONS,
    recurrent: bool = False,
    description: str = "",
    expand: Callable[[dict], list] | None = None,
    force: bool = False,
) -> Any:
    """Register a layer builder by name; usable as a decorator on the build function."""

    def add(fn: Callable[[LayerCall], nn.Module]) -> Callable[[LayerCall], nn.Module]:
        unknown = set(sections) - SECTIONS
        if unknown:
            raise ValueError(f"layer '{name}': unknown sections {sorted(unknown)}; use {sorted(SECTIONS)}")
        if primary is not None and primary not in (params or {}):
            raise ValueError(f"layer '{name}': primary argument '{primary}' is not among its params")
        builder = LayerBuilder(
            name=name,
            build=fn,
            infer=infer,
            params=dict(params or {}),
            required=tuple(required),
            primary=primary,
            sections=frozenset(sections),
            recurrent=recurrent,
            description=description or (fn.__doc__ or "").strip().split("\n")[0],
            expand=expand,
        )
        LAYERS.register(name, builder, force=force)
        return fn

    return add if build is None else add(build)
