"""The pipeline as functions: load -> validate -> check against the env -> compile.

Importing this module does not import torch; only ``compile_spec`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sfspec.compiler.budget import MemoryEstimate, check_memory
from sfspec.compiler.interface_config import policy_spaces
from sfspec.compiler.plan import ModelPlan, plan_model
from sfspec.spec.environment import env_spaces
from sfspec.spec.interface import check_interface
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
    plan = _plan(loaded)
    memory = check_memory(loaded.data, plan.obs_space, plan.action_space, plan, loaded.source_map)
    return CheckedSpec(loaded, plan.obs_space, plan.action_space, plan, memory)


def _plan(loaded: LoadedSpec, env_obs_space: Any = None, env_action_space: Any = None) -> ModelPlan:
    """The model's plan on the network's spaces: the env's, through the spec's robot interface if it has one."""
    smap, env_cfg = loaded.source_map, loaded.data["env"]
    if env_obs_space is None or env_action_space is None:
        env_obs_space, env_action_space = env_spaces(env_cfg, smap)
    interface = check_interface(loaded.data, env_obs_space, env_action_space, smap)
    obs_space, action_space = policy_spaces(interface, env_obs_space, env_action_space)
    plan = plan_model(loaded.data, obs_space, action_space, smap, env_cfg["id"])
    if interface is not None:
        plan.interface = (interface, env_obs_space, env_action_space)
    return plan


def compile_spec(
    loaded: LoadedSpec, obs_space: Any = None, action_space: Any = None, plan: ModelPlan | None = None
) -> ActorCritic:
    """Build the actor-critic a loaded spec describes (the env's spaces from its env unless given).

    Pass the ``plan`` of ``check(loaded)`` to build from it; without one the spec is planned here, once.
    """
    from sfspec.compiler.build import build_from_plan

    smap = loaded.source_map
    if plan is None:
        plan = _plan(loaded, obs_space, action_space)
    check_memory(loaded.data, plan.obs_space, plan.action_space, plan, smap, training=False)  # before torch
    return build_from_plan(plan, smap)


def compile_checked(checked: CheckedSpec) -> ActorCritic:
    """Build the actor-critic of a checked spec from the plan ``check`` made."""
    return compile_spec(checked.loaded, plan=checked.plan)
