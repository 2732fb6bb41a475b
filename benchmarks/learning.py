"""Learning results: train a spec for several seeds, evaluate each deterministically, print a table.

    python benchmarks/learning.py specs/acrobot.yaml --seeds 0 1 2 --target -90
    python benchmarks/learning.py specs/memory.yaml --set model.core=[] --label "no core"
    python benchmarks/learning.py specs/cartpole.yaml --solve 500   # stop once evaluation reaches 500
    python benchmarks/learning.py --default-budget --seeds 0 1 2 --stop-at-target   # env + model only, 8 and 4,096 envs

``--default-budget`` trains specs that give only ``env`` and ``model`` (CartPole and Pendulum, each at
8 and 4,096 environments): every train: value is the default the rule derives from env.num_envs
(docs/runtime.md), the budget included, and each must reach its target (CartPole 500, Pendulum -250).

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
from sfspec.compiler.budget import state_floats
from sfspec.runtime.checkpoint import load_checkpoint
from sfspec.runtime.config import RunnerConfig, num_envs_of, with_derived_defaults
from sfspec.runtime.evaluate import evaluate
from sfspec.runtime.threads import choose_threads, set_threads
from sfspec.runtime.train import build_for_spec, resolve_device, train
from sfspec.runtime.vec_env import make_env

RESULTS = Path(__file__).resolve().parent / "results.jsonl"
SPECS = Path(__file__).resolve().parent.parent / "specs"

_MLP = {"encoder": [{"linear": 64}, "tanh", {"linear": 64}, "tanh"]}
_GAUSSIAN = {"normalize_obs": True, **_MLP, "action": {"std": {"init": 1.0}, "bounds": "clip"}}
# name: (spec with env and model only, target return)
DEFAULT_BUDGET = {
    f"{task}@{n}": ({"env": {"id": f"sfspec/{task}-v1", "num_envs": n}, "model": model}, target)
    for task, model, target in (("CartPole", _MLP, 500.0), ("Pendulum", _GAUSSIAN, -250.0))
    for n in (8, 4096)
}


def prepare(loaded) -> dict:
    """The spec as ``sfspec train`` runs it: derived train: defaults written in, the thread policy applied."""
    checked = pipeline.check(loaded)
    spec = with_derived_defaults(loaded.data)
    cfg = RunnerConfig.from_spec(spec)
    recurrent = state_floats(checked.plan) > 0
    set_threads(choose_threads(cfg.threads, checked.memory.params.total, num_envs_of(spec), recurrent))
    return spec


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
    parser.add_argument("spec", nargs="?")
    parser.add_argument("--default-budget", nargs="*", metavar="NAME", help=f"of {', '.join(DEFAULT_BUDGET)}")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--eval-env", help="evaluate on this env id (default: the spec's)")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--target", type=float, help="the return the task asks for (printed as met or not)")
    parser.add_argument("--solve", type=float, help="stop training once evaluation reaches this return")
    parser.add_argument("--solve-episodes", type=int, default=10)
    parser.add_argument("--stop-at-target", action="store_true", help="--default-budget: --solve at each one's target")
    parser.add_argument("--device")
    parser.add_argument("--label", default="")
    parser.add_argument("--results", type=Path, default=RESULTS, help="append the summary here (JSON lines)")
    args = parser.parse_args(argv)
    if args.default_budget is not None:
        return default_budget(args)
    if not args.spec:
        parser.error("give a SPEC, or --default-budget")
    spec = prepare(pipeline.load(args.spec, args.overrides))
    return run_spec(spec, args)


def default_budget(args: argparse.Namespace) -> int:
    """Every (or each named) env + model-only spec, at its default budget, for every seed."""
    import yaml

    from sfspec.spec.loader import load_spec

    names = args.default_budget or list(DEFAULT_BUDGET)
    for name in names:
        spec, target = DEFAULT_BUDGET[name]
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name.replace('@', '-')}.yaml"
            path.write_text(yaml.safe_dump(spec))
            loaded = load_spec(path, args.overrides)
            args.spec, args.target, args.label = f"default-budget {name}", target, args.label or "default budget"
            args.solve = target if args.stop_at_target else args.solve
            run_spec(prepare(loaded), args)
    return 0


def run_spec(spec: dict, args: argparse.Namespace) -> int:
    """Train every seed of a prepared spec; append the summary to results.jsonl."""
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
        "num_envs": num_envs_of(spec),
        "train": {k: spec["train"][k] for k in ("steps", "rollout", "epochs", "minibatches", "lr", "lr_schedule")},
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
    with args.results.open("a") as f:
        f.write(json.dumps(summary) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
