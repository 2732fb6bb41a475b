"""Base classes for components written in Python, in Sample Factory's shape.

A component written for Sample Factory's custom-model template works after changing its imports:

- ``Encoder(cfg, obs_space)``: ``forward(obs_dict) -> features``, ``get_out_size()``.
- ``ModelCore(cfg, input_size)``: ``forward(head_output, rnn_states) -> (out, new_rnn_states)``,
  ``get_out_size()``; a recurrent core also says how wide its state is with ``state_size()``.
- ``Decoder(cfg, decoder_input_size)``: ``forward(core_output)``, ``get_out_size()``.

``cfg`` gives attribute access to the component's ``params`` from the spec. Register a class with
``ENCODERS.register("name", cls)`` (likewise ``CORES``, ``DECODERS``, ``ACTOR_CRITICS``) and name it
in YAML: ``encoder: {custom: name, params: {...}}``. A class attribute ``params_schema`` (JSON
Schema) makes the spec validate those params.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn


class Config(Mapping):
    """Read-only attribute access to a component's params (nested mappings too)."""

    def __init__(self, params: Mapping | None = None):
        self._params = dict(params or {})

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            value = self._params[name]
        except KeyError:
            raise AttributeError(f"cfg has no '{name}'; params given: {sorted(self._params)}") from None
        return Config(value) if isinstance(value, Mapping) else value

    def __getitem__(self, key: str) -> Any:
        return self._params[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._params)

    def __len__(self) -> int:
        return len(self._params)

    def __repr__(self) -> str:
        return f"Config({self._params!r})"


class ModelParams(Config):
    """What the compiler hands a custom ``ActorCritic`` as ``cfg``: its params, and the model plan.

    Sample Factory's signature, ``cls(model_factory, obs_space, action_space, cfg)`` calling
    ``super().__init__(obs_space, action_space, cfg)``, has no place for the plan (inputs,
    normaliser, action options); the base class reads it from ``cfg.model_plan``. A class may
    pass it explicitly instead: ``super().__init__(obs_space, action_space, cfg, plan=cfg.model_plan)``.
    """

    def __init__(self, params: Mapping | None, model_plan: Any):
        super().__init__(params)
        self.model_plan = model_plan


class Encoder(nn.Module):
    """Observations (a dict of tensors) to one feature vector per row."""

    params_schema: dict | None = None

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg

    def get_out_size(self) -> int:
        """Width of the feature vector."""
        raise NotImplementedError(f"{type(self).__name__} must define get_out_size()")


class ModelCore(nn.Module):
    """Features to core output, carrying recurrent state as one (batch, state_size) tensor."""

    params_schema: dict | None = None

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg

    def get_out_size(self) -> int:
        """Width of the core's output."""
        raise NotImplementedError(f"{type(self).__name__} must define get_out_size()")

    def state_size(self) -> int:
        """Width of the recurrent state (0: no memory)."""
        return 0

    def forward_sequence(
        self, x: torch.Tensor, state: torch.Tensor, starts: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run (T, B, F) inputs from ``state``, zeroing state where ``starts`` (T, B) marks a new episode."""
        outputs = []
        for t in range(x.shape[0]):
            state = state * (1.0 - starts[t]).unsqueeze(-1)
            out, state = self(x[t], state)
            outputs.append(out)
        return torch.stack(outputs), state


class Decoder(nn.Module):
    """More layers on the core output."""

    params_schema: dict | None = None

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg

    def get_out_size(self) -> int:
        """Width of the decoder's output."""
        raise NotImplementedError(f"{type(self).__name__} must define get_out_size()")
