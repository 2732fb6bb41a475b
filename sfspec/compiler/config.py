"""The model section's options: each with its schema fragment, and the typed config the compiler reads.

Torch-free: the spec schema takes these fragments for ``model.normalize_obs``, ``model.action`` and
``model.init``, and ``ModelConfig`` reads its defaults from the same fragments, so every default
has one source (as ``sfspec.runtime.config`` does for ``train:``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

POSITIVE_NUMBER = {"type": "number", "exclusiveMinimum": 0}

# model.preprocess.<key>: how one raw observation becomes network input.
PREPROCESS_PARAMS: dict[str, dict] = {
    "layout": {"enum": ["auto", "channels_first", "channels_last"], "default": "auto"},
    "scale": {**POSITIVE_NUMBER},
    "discrete": {"enum": ["one_hot", "index"], "default": "one_hot"},
}

SHARE_WEIGHTS_PARAM: dict = {"type": "boolean", "default": False}

# model.normalize_obs when it is a mapping (true means every default).
NORMALIZE_PARAMS: dict[str, dict] = {
    "clip": {**POSITIVE_NUMBER, "default": 5.0},
    "epsilon": {**POSITIVE_NUMBER, "default": 1e-8},
    "keys": {"type": "array", "items": {"type": "string"}},
}

# model.action.std: the Gaussian's standard deviation (Box actions).
STD_PARAMS: dict[str, dict] = {
    "init": {**POSITIVE_NUMBER, "default": 1.0},
    "mode": {"enum": ["state_independent", "state_dependent"], "default": "state_independent"},
    "min": {**POSITIVE_NUMBER, "default": 1e-6},
    "max": {**POSITIVE_NUMBER, "default": 10.0},
}

# model.action.bounds (Box actions).
BOUNDS_PARAM: dict = {
    "enum": ["clip", "tanh", "none"],
    "default": "clip",
    "description": "Box actions: how actions meet the space's bounds",
}

INIT_SCHEMES = ["orthogonal", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "default"]

# model.init: weight initialisation, with separate gains for the heads.
INIT_PARAMS: dict[str, dict] = {
    "weights": {"enum": INIT_SCHEMES, "default": "orthogonal"},
    "gain": {**POSITIVE_NUMBER, "default": 1.4142135623730951},  # sqrt(2), for ReLU-like layers
    "policy_gain": {**POSITIVE_NUMBER, "default": 0.01},
    "value_gain": {**POSITIVE_NUMBER, "default": 1.0},
}


def option(params: dict[str, dict], given: Any, name: str) -> Any:
    """``given[name]`` if written, else the fragment's default."""
    if isinstance(given, dict) and name in given:
        return given[name]
    return params[name].get("default")


@dataclass(frozen=True)
class StdConfig:
    """How the Gaussian action head parameterises its standard deviation."""

    init: float
    mode: str
    min: float
    max: float

    @property
    def state_dependent(self) -> bool:
        """Whether the std is an output of the network (else one learned parameter per dimension)."""
        return self.mode == "state_dependent"

    @classmethod
    def from_spec(cls, std: Any) -> StdConfig:
        """``model.action.std`` with the schema's defaults."""
        return cls(**{k: option(STD_PARAMS, std, k) for k in STD_PARAMS})


@dataclass(frozen=True)
class InitConfig:
    """Weight initialisation: the scheme, the layers' gain and the heads' gains."""

    weights: str
    gain: float
    policy_gain: float
    value_gain: float

    @classmethod
    def from_spec(cls, init: Any) -> InitConfig:
        """``model.init`` with the schema's defaults."""
        return cls(**{k: option(INIT_PARAMS, init, k) for k in INIT_PARAMS})


@dataclass(frozen=True)
class ModelConfig:
    """The model section's scalar options, resolved with the schema's defaults (per-input options: ``preprocess``)."""

    share_weights: bool
    normalize: bool
    normalize_clip: float
    normalize_epsilon: float
    std: StdConfig
    bounds: str
    init: InitConfig
    mask: str | None = None

    @classmethod
    def from_spec(cls, model: dict) -> ModelConfig:
        """Fill every field from a validated ``model`` section, else the schema default."""
        normalize = model.get("normalize_obs", False)
        action = model.get("action", {})
        return cls(
            share_weights=bool(option({"share_weights": SHARE_WEIGHTS_PARAM}, model, "share_weights")),
            normalize=bool(normalize),
            normalize_clip=float(option(NORMALIZE_PARAMS, normalize, "clip")),
            normalize_epsilon=float(option(NORMALIZE_PARAMS, normalize, "epsilon")),
            std=StdConfig.from_spec(action.get("std", {})),
            bounds=option({"bounds": BOUNDS_PARAM}, action, "bounds"),
            init=InitConfig.from_spec(model.get("init", {})),
            mask=action.get("mask"),
        )
