"""The ``train:`` section: the runner's settings and PPO's, each with its schema fragment and typed config.

Torch-free: the spec schema is assembled from these fragments, and the typed configs read their
defaults from the same fragments, so every default has one source. The settings that depend on the
number of environments (``DERIVED``) have no fixed default: ``scale_defaults`` is their one rule, and
their fragments say so (``x-derived``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

POSITIVE_INT = {"type": "integer", "minimum": 1}
PROBABILITY = {"type": "number", "minimum": 0, "maximum": 1}
_DERIVED = {"x-derived": "env.num_envs"}  # no fixed default: scale_defaults(num_envs) chooses it

# Settings of the loop around any algorithm: budget, seed, device, logging, checkpoints.
RUNNER_PARAMS: dict[str, dict] = {
    "algorithm": {"type": "string", "default": "ppo", "description": "the training algorithm (registered by name)"},
    "steps": {
        **POSITIVE_INT,
        **_DERIVED,
        "description": "environment steps in total (default: the larger of 1,000,000 and 100 updates; "
        "see docs/runtime.md#defaults-from-the-number-of-environments)",
    },
    "seed": {"type": "integer", "minimum": 0, "default": 0},
    "device": {"type": "string", "pattern": r"^(auto|cpu|cuda(:\d+)?|mps)$", "default": "auto"},
    "log_interval": {**POSITIVE_INT, "default": 1, "description": "updates between log lines"},
    "checkpoint_interval": {**POSITIVE_INT, "default": 50, "description": "updates between checkpoints"},
    "compile": {"type": "boolean", "default": False, "description": "torch.compile the network's forward"},
    "threads": {
        "anyOf": [{"const": "auto"}, POSITIVE_INT],
        "default": "auto",
        "description": "CPU threads for torch (auto: from the model size, the batch and the cores; "
        "see docs/runtime.md#cpu-threads)",
    },
}

_RULE = "derived from env.num_envs, see docs/runtime.md#defaults-from-the-number-of-environments)"

PPO_PARAMS: dict[str, dict] = {
    "rollout": {**POSITIVE_INT, **_DERIVED, "description": "steps per environment per update (default: " + _RULE},
    "epochs": {**POSITIVE_INT, **_DERIVED, "description": "passes over each rollout (default: " + _RULE},
    "minibatches": {**POSITIVE_INT, **_DERIVED, "description": "minibatches per epoch (default: " + _RULE},
    "lr": {"type": "number", "exclusiveMinimum": 0, **_DERIVED, "description": "learning rate (default: " + _RULE},
    "lr_schedule": {
        "enum": ["constant", "linear", "kl_adaptive"],
        **_DERIVED,
        "description": "kl_adaptive follows desired_kl (default: " + _RULE,
    },
    "desired_kl": {"type": "number", "exclusiveMinimum": 0, "default": 0.01},
    "gamma": {**PROBABILITY, "default": 0.99},
    "gae_lambda": {**PROBABILITY, "default": 0.95},
    "clip": {"type": "number", "exclusiveMinimum": 0, "default": 0.2},
    "value_clip": {"type": ["number", "null"], "exclusiveMinimum": 0, "default": None},
    "entropy_coef": {"type": "number", "minimum": 0, "default": 0.0},
    "value_coef": {"type": "number", "minimum": 0, "default": 0.5},
    "max_grad_norm": {
        "type": ["number", "null"],
        "exclusiveMinimum": 0,
        "default": 0.5,
        "description": "bound on each side's gradient norm (actor and critic clipped apart; shared weights: one norm)",
    },
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


# ---------------------------------------------------------------- defaults from the number of environments

TARGET_BATCH = 2048  # environment steps per update when environments are few (SB3's and CleanRL's scale)
MIN_ROLLOUT, MAX_ROLLOUT = 24, 512  # 24: rsl_rl's rollout for thousands of envs; 512 keeps one env's batch sane
MIN_STEPS, MIN_UPDATES = 1_000_000, 100
DEFAULT_NUM_ENVS = 8  # env.num_envs's schema default (sfspec.spec.config.ENV_PARAMS); torch-free copy, tested
# What the defaults were before they depended on env.num_envs: checkpoints written then lack these keys.
LEGACY_DEFAULTS = {
    "rollout": 128,
    "epochs": 4,
    "minibatches": 4,
    "lr": 3e-4,
    "lr_schedule": "constant",
    "steps": 1_000_000,
}


def scale_defaults(num_envs: int) -> dict[str, Any]:
    """The train: defaults for ``num_envs`` environments, the one rule (docs/runtime.md).

    Few environments: a rollout long enough for ``TARGET_BATCH`` steps per update (512 steps at 1-4
    envs, 256 at 8, 64 at 32). Many: rsl_rl's regime, a 24-step rollout. Always 5 epochs of 4
    minibatches (so a minibatch holds at least 128 steps) and a KL-adaptive learning rate from 1e-3,
    and a budget of at least 100 updates.
    """
    rollout = min(MAX_ROLLOUT, max(MIN_ROLLOUT, 8 * math.ceil(TARGET_BATCH / (8 * num_envs))))
    steps = max(MIN_STEPS, MIN_UPDATES * rollout * num_envs)
    return {"rollout": rollout, "epochs": 5, "minibatches": 4, "lr": 1e-3, "lr_schedule": "kl_adaptive", "steps": steps}


DERIVED = tuple(scale_defaults(1))  # the keys the rule chooses


def num_envs_of(spec: dict) -> int:
    """``env.num_envs`` as the spec gives it, else its schema default."""
    value = spec.get("env", {}).get("num_envs", DEFAULT_NUM_ENVS)
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 1 else 1


def with_derived_defaults(spec: dict, defaults: dict[str, Any] | None = None) -> dict:
    """The spec with every derived ``train:`` key it leaves out written in (a copy; explicit values win).

    ``defaults``: the values to fill in (``LEGACY_DEFAULTS`` for a run written before the rule);
    by default ``scale_defaults(env.num_envs)``. Only keys the spec's algorithm reads are added.
    """
    from sfspec.runtime.algorithm import ALGORITHMS  # lazily: algorithm imports this module

    train = dict(spec.get("train") or {})
    algorithm = train.get("algorithm", RUNNER_PARAMS["algorithm"]["default"])
    own = ALGORITHMS.get(algorithm).params if algorithm in ALGORITHMS.names() else {}
    for key, value in (defaults or scale_defaults(num_envs_of(spec))).items():
        if key not in train and (key in own or key in RUNNER_PARAMS):
            train[key] = value
    return {**spec, "train": train}


def resolve(params: dict[str, dict], given: dict, derived: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every key of ``params`` from ``given``, else its schema default, else ``derived`` (scale_defaults).

    '1e6' written for an integer becomes int.
    """
    values = {}
    for name, prop in params.items():
        fallback = (derived or {}).get(name) if "x-derived" in prop else prop.get("default")
        value = given.get(name, fallback)
        integer = prop.get("type") in ("integer", ["integer", "null"]) or "anyOf" in prop
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
    threads: int | str

    @classmethod
    def from_spec(cls, spec: dict) -> RunnerConfig:
        """Fill every field from ``spec['train']``, else the schema default, else the rule for ``env.num_envs``."""
        derived = scale_defaults(num_envs_of(spec))
        return cls(**resolve(RUNNER_PARAMS, spec.get("train") or {}, derived))


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
        """Fill every field from ``spec['train']``, else the schema default, else the rule for ``env.num_envs``."""
        given, derived = spec.get("train") or {}, scale_defaults(num_envs_of(spec))
        return cls(**resolve(RUNNER_PARAMS, given, derived), **resolve(PPO_PARAMS, given, derived))
