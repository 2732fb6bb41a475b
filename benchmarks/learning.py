"""Learning results: train a spec for several seeds, evaluate each deterministically, print a table.

    python benchmarks/learning.py specs/acrobot.yaml --seeds 0 1 2 --target -90
    python benchmarks/learning.py specs/memory.yaml --set model.core=[] --label "no core"
    python benchmarks/learning.py specs/cartpole.yaml --solve 500   # stop once evaluation reaches 500

With ``--solve``, the policy is evaluated at every log interval (evaluation time is not counted)
and training stops at the first evaluation that reaches the target: the time to solve.
Results are appended to benchmarks/results.jsonl with the machine and date.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from sfspec import pipeline
from sfspec.runtime.checkpoint import load_checkpoint
from sfspec.runtime.evaluate import evaluate
from sfspec.runtime.train import build_for_spec, resolve_device, train
from sfspec.runtime.vec_env import make_env

RESULTS = Path(__file__).resolve().parent / "results.jsonl"


def load_trained(spec: dict, env_cfg: dict, run_dir: Path, device: torch.device):
    """The model of a finished run, built for ``env_cfg``'s spaces, with its checkpoint's weights."""
    probe = make_env({**env_cfg, "num_envs": 1}, 0, device)
    model = build_for_spec(spec, probe, device)
    probe.close()
    model.load_state_dict(load_checkpoint(run_dir)["model"])
    return model


def run_seed(spec: dict, seed: int, args: argparse.Namespace) -> dict:
    """Train one seed; return its evaluation and timings."""
    spec = {**spec, "train": {**spec.get("train", {}), "seed": seed}}
    eval_env = {**spec["env"], "id": args.eval_env or spec["env"]["id"]}
    device = resolve_device(args.device or spec["train"].get("device", "auto"))
    solved_at: dict = {}

    def check(metrics: dict, model) -> bool:
        if args.solve is None:
            return False
        score = evaluate(model, eval_env, args.solve_episodes, seed, device).summary()["return_mean"]
        model.train()
        if score >= args.solve:
            solved_at.update(step=metrics["step"], time=metrics["time"])
            return True
        return False

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = train(spec, Path(tmp) / "run", args.device, quiet=True, on_log=check if args.solve else None)
        wall = time.perf_counter() - start
        metrics = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
        model = load_trained(spec, eval_env, Path(tmp) / "run", device)
    score = evaluate(model, eval_env, args.episodes, seed, device).summary()
    return {
        "seed": seed,
        "steps": result.global_step,
        "train_time_s": round(metrics[-1]["time"], 2),
        "wall_time_s": round(wall, 2),
        "sps": round(result.global_step / max(metrics[-1]["time"], 1e-9)),
        "eval_return_mean": round(score["return_mean"], 2),
        "eval_return_std": round(score["return_std"], 2),
        "solved_step": solved_at.get("step"),
        "solved_time_s": solved_at.get("time"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--eval-env", help="evaluate on this env id (default: the spec's)")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--target", type=float, help="the return the task asks for (printed as met or not)")
    parser.add_argument("--solve", type=float, help="stop training once evaluation reaches this return")
    parser.add_argument("--solve-episodes", type=int, default=10)
    parser.add_argument("--device")
    parser.add_argument("--label", default="")
    args = parser.parse_args(argv)
    torch.set_num_threads(torch.get_num_threads())
    spec = pipeline.load(args.spec, args.overrides).data
    rows = []
    for seed in args.seeds:
        row = run_seed(spec, seed, args)
        rows.append(row)
        print(json.dumps(row), flush=True)
    returns = [r["eval_return_mean"] for r in rows]
    summary = {
        "spec": args.spec,
        "label": args.label,
        "overrides": args.overrides,
        "env": spec["env"]["id"],
        "eval_env": args.eval_env or spec["env"]["id"],
        "seeds": args.seeds,
        "return_mean_over_seeds": round(statistics.mean(returns), 2),
        "return_min_over_seeds": round(min(returns), 2),
        "train_time_mean_s": round(statistics.mean(r["train_time_s"] for r in rows), 2),
        "target": args.target,
        "target_met_by_every_seed": None if args.target is None else all(x >= args.target for x in returns),
        "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads".strip(),
        "device": args.device or spec.get("train", {}).get("device", "auto"),
        "torch": torch.__version__,
        "date": date.today().isoformat(),
        "runs": rows,
    }
    if any(r["solved_time_s"] is not None for r in rows):
        solved = [r["solved_time_s"] for r in rows if r["solved_time_s"] is not None]
        summary["solved_seeds"] = len(solved)
        summary["solve_time_mean_s"] = round(statistics.mean(solved), 2)
    with RESULTS.open("a") as f:
        f.write(json.dumps(summary) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
