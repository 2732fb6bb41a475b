"""Typed views of a spec's sections, with the schema's defaults (one source for every default)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sfspec.spec.schema import schema_default


@dataclass(frozen=True)
class EnvConfig:
    """The ``env:`` section, resolved with the schema's defaults."""

    id: str
    num_envs: int
    vectorization: str
    kwargs: dict = field(default_factory=dict)

    @classmethod
    def from_spec(cls, env: dict) -> EnvConfig:
        """Read an ``env:`` mapping (the section itself, not the whole spec)."""
        return cls(
            id=env["id"],
            num_envs=int(env.get("num_envs", schema_default("env", "num_envs"))),
            vectorization=env.get("vectorization", schema_default("env", "vectorization")),
            kwargs=dict(env.get("kwargs") or {}),
        )
