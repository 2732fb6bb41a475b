"""What a spec will cost before anything is allocated: parameters and memory (torch-free).

``check_memory`` runs with the spaces (``pipeline.check``): parameters from the plan's nodes, the
rollout buffer and the environments' observations, against the machine's memory. The layer count
(``layer_count_issues``, with the schema) lives in ``sfspec.compiler.layer_count``; it is
importable from here too.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from sfspec.compiler.layer_count import MAX_LAYERS, format_count, layer_count_issues
from sfspec.compiler.plan import LayerNode, ModelPlan, plan_model
from sfspec.compiler.registry import LAYERS
from sfspec.compiler.shapes import infer_layer, parse_layer_item
from sfspec.errors import SpecError, SpecIssue
from sfspec.sourcemap import SourceMap

__all__ = ["MAX_LAYERS", "MemoryEstimate", "ParamCount", "check_memory", "count_params", "layer_count_issues"]

TRAIN_BYTES_PER_PARAM = 16  # float32 weights, gradients and Adam's two moments
STEP_FLOATS = 8  # per env step besides obs, actions and states: log-prob, value, reward, ends, starts, GAE


# ---------------------------------------------------------------- parameters (from the plan's shapes)


@dataclass
class ParamCount:
    """Parameters of the model, and the layer (spec path) holding the most."""

    total: int = 0
    largest: int = 0
    largest_path: tuple = ("model",)

    def add(self, count: int, path: tuple) -> None:
        """Add one layer's parameters (its whole subtree for composites, attributed to the item)."""
        self.total += count
        if count > self.largest:
            self.largest, self.largest_path = count, path


def _own_params(name: str, args: dict, shape: tuple) -> int:
    """Parameters of one simple built-in layer taking ``shape`` (0 for layers without any or unknown)."""
    if name == "linear":
        return shape[-1] * args["features"] + (args["features"] if args["bias"] else 0)
    if name in ("conv1d", "conv2d"):
        kernel = args["kernel"] if isinstance(args["kernel"], list) else [args["kernel"]] * (len(shape) - 1)
        return shape[0] * args["channels"] * math.prod(kernel) + args["channels"]
    if name == "layer_norm":
        return 2 * shape[-1]
    if name == "embedding":
        return args["num"] * args["dim"]
    if name == "self_attention":
        return 4 * shape[-1] * shape[-1] + 4 * shape[-1]
    if name in ("gru", "lstm"):
        gates, hidden = (3 if name == "gru" else 4), args["hidden"]
        first = gates * (shape[0] * hidden + hidden * hidden + 2 * hidden)
        return first + (args["layers"] - 1) * gates * (2 * hidden * hidden + 2 * hidden)
    return 0  # activations, pooling, reshapes; plugin layers are not counted (the estimate is a lower bound)


def _item_params(item: Any, shape: tuple, path: tuple, section: str) -> tuple[int, tuple | None]:
    """(parameters, output shape) of one layer item, composites included."""
    return _parsed_params(*parse_layer_item(item), shape, path, section)


def _parsed_params(name: str, args: dict, shape: tuple, path: tuple, section: str) -> tuple[int, tuple | None]:
    """(parameters, output shape) of a layer given by name and arguments."""
    expand = LAYERS.get(name).expand
    if expand is not None:
        return _list_params(expand(args), shape, path + (name,), section)
    if name == "residual":
        count, _ = _list_params(args["layers"], shape, path + (name, "layers"), section)
        return count, shape
    if name == "repeat":
        total, out = 0, shape
        for _ in range(args["times"]):  # bounded: the layer count was checked first
            if out is None:
                break
            count, out = _list_params(args["layers"], out, path + (name, "layers"), section)
            total += count
        return total, out
    return _own_params(name, args, shape), infer_layer({name: args}, shape, path, section)


def _list_params(items: list, shape: tuple | None, path: tuple, section: str) -> tuple[int, tuple | None]:
    """(parameters, output shape) of a nested layer list."""
    total = 0
    for i, item in enumerate(items):
        if shape is None:
            break
        count, shape = _item_params(item, shape, path + (i,), section)
        total += count
    return total, shape


def _node_params(node: LayerNode) -> int:
    """Parameters of one planned layer, its whole subtree for composites (0 where its input is not known)."""
    if node.custom is not None or node.in_shape is None:
        return 0  # custom components are not counted; after an unknown shape nothing is
    return _parsed_params(node.layer, node.args, node.in_shape, node.path, node.part)[0]


def count_params(plan: ModelPlan) -> ParamCount:
    """Trainable parameters of a planned model (built-in layers and heads; custom parts not counted)."""
    acc = ParamCount()
    if plan.custom_model is not None:
        return acc
    head_width, std_params = _action_head(plan)
    for stack in plan.stacks:
        for node in stack.nodes:
            acc.add(_node_params(node), node.path + (node.layer,))
        out = stack.part_shapes.get("decoder")
        if out is None:  # a custom part or a plugin layer hides the width: the heads are not counted
            continue
        width = out[-1]
        if stack.name in ("actor", "shared"):
            acc.add(width * head_width + head_width + std_params, ("model", "action"))
        if stack.name in ("critic", "shared"):
            acc.add(width + 1, ("model",))
    return acc


def _action_head(plan: ModelPlan) -> tuple[int, int]:
    """(outputs of the action head's linear layer, log-std parameters), as heads.ActionHead makes them."""
    dependent = plan.config.std.state_dependent
    width = std = 0
    for part in plan.action.parts:
        if part.kind in ("categorical", "multi_categorical"):
            width += sum(part.categories)
        elif part.kind == "bernoulli":
            width += part.size
        else:
            width += part.size * (2 if dependent else 1)
            std += 0 if dependent else part.size
    return width, std


def state_floats(plan: ModelPlan) -> int:
    """Recurrent state carried per environment (GRU: h; LSTM: h and c), all stacks."""
    total = 0
    for stack in plan.stacks:
        for item in stack.core if isinstance(stack.core, list) else []:
            name, args = parse_layer_item(item)
            if name in ("gru", "lstm"):
                total += args["hidden"] * args["layers"] * (2 if name == "lstm" else 1)
    return total


# ---------------------------------------------------------------- memory


@dataclass
class MemoryEstimate:
    """Bytes a training run of a spec needs at least, by what needs them."""

    params: ParamCount
    param_bytes: int
    rollout_bytes: int
    env_bytes: int
    rollout: int
    num_envs: int
    obs_bytes: int

    @property
    def total(self) -> int:
        """All of it together."""
        return self.param_bytes + self.rollout_bytes + self.env_bytes


def observation_bytes(plan: ModelPlan) -> int:
    """Bytes of one environment's observation, as the environment gives it."""
    total = 0
    for obs in plan.inputs.values():
        dtype = getattr(obs.space, "dtype", None)
        itemsize = np.dtype(dtype).itemsize if dtype is not None else 4
        total += math.prod(obs.raw_shape or (1,)) * itemsize
    return total


def estimate_memory(spec: dict, plan: ModelPlan, training: bool = True) -> MemoryEstimate:
    """Parameters (trained with Adam), rollout buffer and environment observations, in bytes.

    With ``training=False`` (building a model to export or evaluate): the weights alone.
    """
    params = count_params(plan)
    if not training:
        return MemoryEstimate(params, params.total * 4, 0, 0, 0, 0, observation_bytes(plan))
    from sfspec.runtime.config import TrainConfig, num_envs_of

    rollout, num_envs = TrainConfig.from_spec(spec).rollout, num_envs_of(spec)  # the rollout the run will use
    obs = observation_bytes(plan)
    per_step = obs + 4 * (plan.action.size + state_floats(plan) + STEP_FLOATS)
    param_bytes = params.total * TRAIN_BYTES_PER_PARAM
    return MemoryEstimate(params, param_bytes, rollout * num_envs * per_step, num_envs * obs, rollout, num_envs, obs)


_SYSCONF = "of physical memory (os.sysconf: SC_PHYS_PAGES x SC_PAGE_SIZE)"


def machine_memory() -> tuple[int, str] | None:
    """(bytes, where the figure comes from) of this machine's memory, or None if it cannot be read."""
    try:
        found = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), _SYSCONF
    except (AttributeError, ValueError, OSError):
        found = _meminfo_total()
    limit = _cgroup_limit()
    if limit is not None and (found is None or limit < found[0]):
        return limit, "allowed to its container (/sys/fs/cgroup/memory.max)"
    return found


def _meminfo_total() -> tuple[int, str] | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024, "of memory (MemTotal in /proc/meminfo)"
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_limit() -> int | None:
    try:
        with open("/sys/fs/cgroup/memory.max") as handle:
            text = handle.read().strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


def format_bytes(n: int) -> str:
    """Bytes as people read them: 1.5 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n} B"  # not reached


def _blame(spec: dict, estimate: MemoryEstimate) -> tuple:
    """The spec value that most drives the estimate."""
    if estimate.param_bytes >= estimate.rollout_bytes + estimate.env_bytes:
        return estimate.params.largest_path
    if estimate.rollout > estimate.num_envs and "rollout" in spec.get("train", {}):
        return ("train", "rollout")
    return ("env", "num_envs") if "num_envs" in spec.get("env", {}) else ("env", "id")


def check_memory(
    spec: dict, obs_space: Any, action_space: Any, plan: ModelPlan | None, smap: SourceMap, training: bool = True
) -> MemoryEstimate:
    """Refuse (SpecError at the value to blame) a spec whose training would not fit in this machine's memory.

    Call it on a loaded, schema-valid spec before building or allocating anything; without a
    ``plan`` it plans the model from the spaces first; ``training=False`` counts the weights alone
    (building a model to export or evaluate). Returns the estimate.
    """
    if plan is None:
        plan = plan_model(spec, obs_space, action_space, smap, spec.get("env", {}).get("id", "the env"))
    estimate = estimate_memory(spec, plan, training)
    memory = machine_memory()
    if memory is None or estimate.total <= memory[0]:
        return estimate
    available, source = memory
    path = _blame(spec, estimate)
    if not training:
        message = (
            f"this model's {format_count(estimate.params.total)} parameters need {format_bytes(estimate.param_bytes)}, "
            f"more than this machine's {format_bytes(available)} {source}"
        )
        raise SpecError(SpecIssue(smap.locate(path), path, message))
    message = (
        f"training this spec needs at least {format_bytes(estimate.total)} of memory, more than this machine's "
        f"{format_bytes(available)} {source}: {format_count(estimate.params.total)} parameters take "
        f"{format_bytes(estimate.param_bytes)} with gradients and Adam state; a rollout of {estimate.rollout:,} "
        f"steps x {estimate.num_envs:,} envs takes {format_bytes(estimate.rollout_bytes)}; the environments' "
        f"observations take {format_bytes(estimate.env_bytes)}"
    )
    raise SpecError(SpecIssue(smap.locate(path), path, message))
