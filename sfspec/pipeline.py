"""The pipeline as functions: load -> validate -> check against the env -> compile.

Importing this module does not import torch; only ``compile_spec`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sfspec.compiler.budget import MemoryEstimate, check_memory
from sfspec.compiler.plan import ModelPlan, plan_model
from sfspec.spec.environment import env_spaces
from sfspec.spec.loader import LoadedSpec, load_spec
from sfspec.spec.validate import validate_spec

if TYPE_CHECKING:
    from sfspec.compiler.model import ActorCritic


def load(path: str | Path, overrides: Sequence[str] = ()) -> LoadedSpec:
    """Load a spec file (extends, --set) and validate it against the schema.

    Checks here need no environment: YAML limits (size, depth, aliases), the schema, finite numbers,
    and the model's layer count.
    """
    loaded = load_spec(path, overrides)
    validate_spec(loaded)
    return loaded


@dataclass
class CheckedSpec:
    """A spec validated against the schema and against its environment's spaces."""

    loaded: LoadedSpec
    obs_space: Any
    action_space: Any
    plan: ModelPlan
    memory: MemoryEstimate


def check(loaded: LoadedSpec) -> CheckedSpec:
    """Check a loaded spec against its environment's spaces (shapes, keys, action options) and memory.

    Refuses a spec whose parameters, rollout and environments would not fit in this machine's
    memory, before torch allocates anything.
    """
    obs_space, action_space = env_spaces(loaded.data["env"], loaded.source_map)
    plan = plan_model(loaded.data, obs_space, action_space, loaded.source_map, loaded.data["env"]["id"])
    memory = check_memory(loaded.data, obs_space, action_space, plan, loaded.source_map)
    return CheckedSpec(loaded, obs_space, action_space, plan, memory)


def compile_spec(
    loaded: LoadedSpec, obs_space: Any = None, action_space: Any = None, plan: ModelPlan | None = None
) -> ActorCritic:
    """Build the actor-critic a loaded spec describes (spaces from its env unless given).

    Pass the ``plan`` of ``check(loaded)`` to build from it; without one the spec is planned here, once.
    """
    from sfspec.compiler.build import build_from_plan

    smap, env_id = loaded.source_map, loaded.data["env"]["id"]
    if plan is None:
        if obs_space is None or action_space is None:
            obs_space, action_space = env_spaces(loaded.data["env"], smap)
        plan = plan_model(loaded.data, obs_space, action_space, smap, env_id)
    check_memory(loaded.data, plan.obs_space, plan.action_space, plan, smap, training=False)  # before torch
    return build_from_plan(plan, smap)


def compile_checked(checked: CheckedSpec) -> ActorCritic:
    """Build the actor-critic of a checked spec from the plan ``check`` made."""
    return compile_spec(checked.loaded, plan=checked.plan)
