"""The ``train:`` section as a typed config; defaults come from the spec schema (one source of truth)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from sfspec.spec.schema import train_schema


@dataclass(frozen=True)
class TrainConfig:
    """PPO settings, resolved from the spec with the schema's defaults."""

    steps: int
    seed: int
    device: str
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
    log_interval: int
    checkpoint_interval: int
    compile: bool
    amp: bool

    @classmethod
    def from_spec(cls, spec: dict) -> TrainConfig:
        """Fill every field from ``spec['train']``, else the schema default."""
        given = spec.get("train", {})
        props = train_schema()["properties"]
        values = {}
        for f in fields(cls):
            value = given.get(f.name, props[f.name].get("default"))
            if (
                isinstance(value, float)
                and value.is_integer()
                and props[f.name].get("type") in ("integer", ["integer", "null"])
            ):
                value = int(value)  # '1e6' in YAML reads as a float
            values[f.name] = value
        return cls(**values)
