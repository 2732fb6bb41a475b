"""The ``train:`` section: the runner's settings and PPO's, each with its schema fragment and typed config.

Torch-free: the spec schema is assembled from these fragments, and the typed configs read their
defaults from the same fragments, so every default has one source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

POSITIVE_INT = {"type": "integer", "minimum": 1}
PROBABILITY = {"type": "number", "minimum": 0, "maximum": 1}

# Settings of the loop around any algorithm: budget, seed, device, logging, checkpoints.
RUNNER_PARAMS: dict[str, dict] = {
    "algorithm": {"type": "string", "default": "ppo", "description": "the training algorithm (registered by name)"},
    "steps": {**POSITIVE_INT, "default": 1_000_000, "description": "environment steps in total"},
    "seed": {"type": "integer", "minimum": 0, "default": 0},
    "device": {"type": "string", "pattern": r"^(auto|cpu|cuda(:\d+)?|mps)$", "default": "auto"},
    "log_interval": {**POSITIVE_INT, "default": 1, "description": "updates between log lines"},
    "checkpoint_interval": {**POSITIVE_INT, "default": 50, "description": "updates between checkpoints"},
    "compile": {"type": "boolean", "default": False, "description": "torch.compile the network's forward"},
}

PPO_PARAMS: dict[str, dict] = {
    "rollout": {**POSITIVE_INT, "default": 128, "description": "steps per environment per update"},
    "epochs": {**POSITIVE_INT, "default": 4},
    "minibatches": {**POSITIVE_INT, "default": 4},
    "lr": {"type": "number", "exclusiveMinimum": 0, "default": 3e-4},
    "lr_schedule": {"enum": ["constant", "linear", "kl_adaptive"], "default": "constant"},
    "desired_kl": {"type": "number", "exclusiveMinimum": 0, "default": 0.01},
    "gamma": {**PROBABILITY, "default": 0.99},
    "gae_lambda": {**PROBABILITY, "default": 0.95},
    "clip": {"type": "number", "exclusiveMinimum": 0, "default": 0.2},
    "value_clip": {"type": ["number", "null"], "exclusiveMinimum": 0, "default": None},
    "entropy_coef": {"type": "number", "minimum": 0, "default": 0.0},
    "value_coef": {"type": "number", "minimum": 0, "default": 0.5},
    "max_grad_norm": {"type": ["number", "null"], "exclusiveMinimum": 0, "default": 0.5},
    "normalize_advantages": {"type": "boolean", "default": True},
    "normalize_returns": {"type": "boolean", "default": False},
    "target_kl": {"type": ["number", "null"], "exclusiveMinimum": 0, "default": None},
    "bptt": {
        "type": ["integer", "null"],
        "minimum": 1,
        "default": None,
        "description": "recurrent cores: sequence length for truncated backprop (default: rollout)",
    },
    "amp": {"type": "boolean", "default": False, "description": "bfloat16 autocast for the network"},
}


def resolve(params: dict[str, dict], given: dict) -> dict[str, Any]:
    """Every key of ``params`` from ``given``, else its schema default ('1e6' written for an integer becomes int)."""
    values = {}
    for name, prop in params.items():
        value = given.get(name, prop.get("default"))
        integer = prop.get("type") in ("integer", ["integer", "null"])
        if isinstance(value, float) and value.is_integer() and integer:
            value = int(value)
        values[name] = value
    return values


@dataclass(frozen=True)
class RunnerConfig:
    """The runner's settings, resolved from ``spec['train']`` with the schema's defaults."""

    algorithm: str
    steps: int
    seed: int
    device: str
    log_interval: int
    checkpoint_interval: int
    compile: bool

    @classmethod
    def from_spec(cls, spec: dict) -> RunnerConfig:
        """Fill every field from ``spec['train']``, else the schema default."""
        return cls(**resolve(RUNNER_PARAMS, spec.get("train", {})))


@dataclass(frozen=True)
class TrainConfig(RunnerConfig):
    """PPO's view of the ``train:`` section: the runner's settings and its own, with the schema's defaults."""

    rollout: int
    epochs: int
    minibatches: int
    lr: float
    lr_schedule: str
    desired_kl: float
    gamma: float
    gae_lambda: float
    clip: float
    value_clip: float | None
    entropy_coef: float
    value_coef: float
    max_grad_norm: float | None
    normalize_advantages: bool
    normalize_returns: bool
    target_kl: float | None
    bptt: int | None
    amp: bool

    @classmethod
    def from_spec(cls, spec: dict) -> TrainConfig:
        """Fill every field from ``spec['train']``, else the schema default."""
        given = spec.get("train", {})
        return cls(**resolve(RUNNER_PARAMS, given), **resolve(PPO_PARAMS, given))

