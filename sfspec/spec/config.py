"""The ``env:`` section: its schema fragment and the typed config read from it (one source for its defaults).

Torch-free, and free of the schema module: ``sfspec.spec.schema`` assembles this fragment, as it
does ``sfspec.compiler.config``'s for ``model:`` and ``sfspec.runtime.config``'s for ``train:``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ENV_PARAMS: dict[str, dict] = {
    "id": {"type": "string", "description": "a gymnasium id, 'module:Env-v0', or sfspec/..."},
    "num_envs": {"type": "integer", "minimum": 1, "default": 8, "description": "environments stepped together"},
    "kwargs": {"type": "object", "description": "passed to the environment's constructor (gymnasium.make)"},
    "vectorization": {
        "enum": ["auto", "sync", "async", "vector_entry_point", "envpool"],
        "default": "auto",
        "description": "gymnasium ids: how the environments are batched; envpool needs the optional envpool package",
    },
    "randomize": {
        "type": "object",
        "description": (
            "tensor envs: physical parameters drawn per episode, uniformly in [low, high] "
            "(the names an env exposes: docs/runtime.md)"
        ),
        "additionalProperties": {
            "type": "array",
            "items": {"type": "number"},
            "minItems": 2,
            "maxItems": 2,
            "description": "[low, high]",
        },
    },
    "noise": {
        "type": "object",
        "description": "training only: noise on what the policy observes, per observation input (never in bundles)",
        "additionalProperties": {
            "type": "object",
            "properties": {
                "type": {
                    "enum": ["gaussian", "uniform"],
                    "default": "gaussian",
                    "description": "gaussian: N(0, std); uniform: U(-a, a) with a = std * sqrt(3)",
                },
                "std": {
                    "anyOf": [
                        {"type": "number", "minimum": 0},
                        {"type": "array", "items": {"type": "number", "minimum": 0}, "minItems": 1},
                    ],
                    "description": "one value for every component, or one per component of the (flattened) input",
                },
            },
            "required": ["std"],
            "additionalProperties": False,
        },
    },
    "delay": {
        "type": "object",
        "description": "training only: steps between the environment and the policy (never in bundles)",
        "properties": {
            name: {
                "anyOf": [
                    {"type": "integer", "minimum": 0},
                    {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 2, "maxItems": 2},
                ],
                "default": 0,
                "description": f"{what}: steps, or [low, high] drawn per episode",
            }
            for name, what in (
                ("observation", "the policy sees the observation from this many steps ago"),
                ("action", "the env applies the action chosen this many steps ago"),
            )
        },
        "additionalProperties": False,
    },
}


@dataclass(frozen=True)
class NoiseConfig:
    """Noise on one observation input: ``gaussian`` or ``uniform``, with a std per component (or one for all)."""

    type: str
    std: tuple[float, ...]  # one value (broadcast) or one per flattened component


def _delay_range(value) -> tuple[int, int]:
    """A delay as (low, high): a fixed number of steps is (d, d)."""
    if isinstance(value, (list, tuple)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


def _noise(entry: dict) -> NoiseConfig:
    std = entry["std"]
    stds = tuple(float(v) for v in std) if isinstance(std, (list, tuple)) else (float(std),)
    default = ENV_PARAMS["noise"]["additionalProperties"]["properties"]["type"]["default"]
    return NoiseConfig(entry.get("type", default), stds)


@dataclass(frozen=True)
class EnvConfig:
    """The ``env:`` section, resolved with the schema's defaults."""

    id: str
    num_envs: int
    vectorization: str
    kwargs: dict = field(default_factory=dict)
    randomize: dict[str, tuple[float, float]] = field(default_factory=dict)  # parameter -> (low, high)
    noise: dict[str, NoiseConfig] = field(default_factory=dict)  # observation input -> its noise
    observation_delay: tuple[int, int] = (0, 0)  # steps, (low, high) drawn per episode
    action_delay: tuple[int, int] = (0, 0)

    @property
    def robust(self) -> bool:
        """Whether noise or delays sit between the environment and the policy."""
        return bool(self.noise) or self.observation_delay != (0, 0) or self.action_delay != (0, 0)

    @classmethod
    def from_spec(cls, env: dict) -> EnvConfig:
        """Read an ``env:`` mapping (the section itself, not the whole spec)."""
        delay = env.get("delay") or {}
        return cls(
            id=env["id"],
            num_envs=int(env.get("num_envs", ENV_PARAMS["num_envs"]["default"])),
            vectorization=env.get("vectorization", ENV_PARAMS["vectorization"]["default"]),
            kwargs=dict(env.get("kwargs") or {}),
            randomize={name: (float(low), float(high)) for name, (low, high) in (env.get("randomize") or {}).items()},
            noise={name: _noise(entry) for name, entry in (env.get("noise") or {}).items()},
            observation_delay=_delay_range(delay.get("observation", 0)),
            action_delay=_delay_range(delay.get("action", 0)),
        )
