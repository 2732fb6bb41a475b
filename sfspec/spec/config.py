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
    "vectorization": {"enum": ["auto", "sync", "async", "vector_entry_point"], "default": "auto"},
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
}


@dataclass(frozen=True)
class EnvConfig:
    """The ``env:`` section, resolved with the schema's defaults."""

    id: str
    num_envs: int
    vectorization: str
    kwargs: dict = field(default_factory=dict)
    randomize: dict[str, tuple[float, float]] = field(default_factory=dict)  # parameter -> (low, high)

    @classmethod
    def from_spec(cls, env: dict) -> EnvConfig:
        """Read an ``env:`` mapping (the section itself, not the whole spec)."""
        return cls(
            id=env["id"],
            num_envs=int(env.get("num_envs", ENV_PARAMS["num_envs"]["default"])),
            vectorization=env.get("vectorization", ENV_PARAMS["vectorization"]["default"]),
            kwargs=dict(env.get("kwargs") or {}),
            randomize={name: (float(low), float(high)) for name, (low, high) in (env.get("randomize") or {}).items()},
        )
