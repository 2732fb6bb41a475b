"""A table of every layer of the actor and critic: path, output shape, parameter count."""

from __future__ import annotations

import json
from typing import Any

from torch import nn

from sfspec.compiler.build import CompiledActorCritic
from sfspec.compiler.model import ActorCritic
from sfspec.compiler.plan import StackResult
from sfspec.compiler.shapes import format_shape
from sfspec.compiler.spaces import describe_space


def _count(module: nn.Module | None) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def summary_rows(model: ActorCritic, results: dict[str, StackResult]) -> list[dict]:
    """One row per layer (and head) with its path, kind, output shape and parameter count."""
    rows = []
    for result in results.values():
        for row in result.rows:
            rows.append(
                {
                    "path": row.path,
                    "layer": row.layer,
                    "output_shape": list(row.out_shape or []),
                    "params": _count(row.module),
                }
            )
    if isinstance(model, CompiledActorCritic):
        actor = "shared" if model.shared else "actor"
        critic = "shared" if model.shared else "critic"
        head = model.action_parameterization
        rows.append(
            {
                "path": f"{actor}.action_head",
                "layer": "action_head",
                "output_shape": [head.linear.out_features],
                "params": _count(head),
            }
        )
        rows.append(
            {
                "path": f"{critic}.value_head",
                "layer": "linear",
                "output_shape": [1],
                "params": _count(model.critic_linear),
            }
        )
    else:  # a custom whole model: its top-level children
        for name, child in model.named_children():
            rows.append({"path": name, "layer": type(child).__name__, "output_shape": [], "params": _count(child)})
    return rows


def summary_data(env_id: str, model: ActorCritic, results: dict[str, StackResult]) -> dict[str, Any]:
    """Everything ``sfspec summary --json`` prints."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "env": env_id,
        "observation": describe_space(model.obs_space),
        "action": describe_space(model.action_space),
        "inputs": {k: list(v.shape) for k, v in model.inputs.items()},
        "layers": summary_rows(model, results),
        "params_total": trainable,
        "params_all": sum(p.numel() for p in model.parameters()),
        "state_size": int(model.state_size),
    }


def format_summary(data: dict[str, Any]) -> str:
    """The summary as a plain-text table."""
    header = ("path", "layer", "output", "params")
    body = [
        (r["path"], r["layer"], format_shape(tuple(r["output_shape"])) if r["output_shape"] else "", f"{r['params']:,}")
        for r in data["layers"]
    ]
    widths = [max(len(str(row[i])) for row in [header, *body]) for i in range(4)]

    def line(cells: tuple) -> str:
        return "  ".join(str(c).rjust(w) if i == 3 else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [
        f"env: {data['env']}",
        f"observation: {data['observation']}",
        f"action: {data['action']}",
        "",
        line(header),
        line(tuple("-" * w for w in widths)),
        *(line(row) for row in body),
        "",
        f"trainable parameters: {data['params_total']:,}",
        f"recurrent state: {data['state_size']} values per environment",
    ]
    return "\n".join(out)


def to_json(data: dict[str, Any]) -> str:
    """The summary as indented JSON."""
    return json.dumps(data, indent=2)
