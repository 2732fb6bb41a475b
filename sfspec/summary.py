"""A table of every layer of the actor and critic: path, output shape, parameter count.

It reads a model through the model contract only (``ActorCritic.summary_rows``), whatever built it.
"""

from __future__ import annotations

import json
from typing import Any

from torch import nn

from sfspec.compiler.model import ActorCritic, ModuleRow
from sfspec.compiler.shapes import format_shape
from sfspec.compiler.spaces import describe_space


def _count(module: nn.Module | None) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def summary_rows(model: ActorCritic, rows: list[ModuleRow] | None = None) -> list[dict]:
    """One row per layer (and head) with its path, kind, output shape and parameter count."""
    rows = model.summary_rows() if rows is None else rows
    return [
        {"path": r.path, "layer": r.layer, "output_shape": list(r.out_shape or []), "params": _count(r.module)}
        for r in rows
    ]


def summary_data(env_id: str, model: ActorCritic, rows: list[ModuleRow] | None = None) -> dict[str, Any]:
    """Everything ``sfspec summary --json`` prints (``rows``: the model's summary rows, read from it if omitted)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "env": env_id,
        "observation": describe_space(model.obs_space),
        "action": describe_space(model.action_space),
        "inputs": {k: list(v.shape) for k, v in model.inputs.items()},
        "layers": summary_rows(model, rows),
        "params_total": trainable,
        "params_all": sum(p.numel() for p in model.parameters()),
        "state_size": int(model.state_size),
        "robot": _robot(model),
    }


def _robot(model: ActorCritic) -> dict[str, Any] | None:
    """What the robot side sees through the spec's interface (None without one)."""
    interface = model.robot_interface
    if interface is None:
        return None
    cfg = interface.cfg
    return {
        "observation": describe_space(interface.obs_space),
        "action": describe_space(interface.action_space),
        "histories": dict(cfg.histories),
        "last_action": cfg.last_action,
        "dt": cfg.dt,
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
        *_robot_lines(data.get("robot")),
        "",
        line(header),
        line(tuple("-" * w for w in widths)),
        *(line(row) for row in body),
        "",
        f"trainable parameters: {data['params_total']:,}",
        f"recurrent state: {data['state_size']} values per environment",
    ]
    return "\n".join(out)


def _robot_lines(robot: dict[str, Any] | None) -> list[str]:
    if robot is None:
        return []
    extras = [f"{k} history {h}" for k, h in robot["histories"].items()]
    extras += ["last action"] if robot["last_action"] else []
    extras += [f"dt {robot['dt']:g} s"] if robot["dt"] else []
    return [
        f"robot observation: {robot['observation']}",
        f"robot action: {robot['action']}",
        f"interface: {', '.join(extras) or 'units only'} (the network's spaces above)",
    ]


def to_json(data: dict[str, Any]) -> str:
    """The summary as indented JSON."""
    return json.dumps(data, indent=2)
