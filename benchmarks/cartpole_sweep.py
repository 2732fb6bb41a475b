"""Tuning sweep for specs/cartpole_fast.yaml: steps to first solve and final return, per seed.

    python benchmarks/cartpole_sweep.py CONFIGS.json --seeds 0 1 2 3 4 [--out benchmarks/cartpole_sweep.jsonl]

CONFIGS.json maps a name to a list of ``--set`` overrides. Each seed trains 100,000 steps; every
4,000 steps until the first solve the policy is evaluated deterministically (10 episodes of the
tensor CartPole, evaluation time not counted); the final policy is evaluated on 20 episodes. The
steps are deterministic; the seconds include a log line per update and were often taken while
other work shared the cores, so compare configurations by steps and final return.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from sfspec import pipeline
from sfspec.runtime.evaluate import evaluate
from sfspec.runtime.train import train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning import load_trained

SPEC = Path(__file__).resolve().parent.parent / "specs" / "cartpole_fast.yaml"
CPU = torch.device("cpu")


def run(spec: dict, seed: int) -> dict:
    """Train one seed; the step and time of the first solve, and the final return."""
    spec = {**spec, "train": {**spec["train"], "seed": seed}}
    probe_env = {**spec["env"], "num_envs": 10}
    first: dict = {}
    next_check = [0]

    def check(metrics: dict, model) -> bool:
        if not first and metrics["step"] >= next_check[0]:
            next_check[0] = metrics["step"] + 4000
            score = evaluate(model, probe_env, 10, 1000 + seed, CPU).summary()["return_mean"]
            model.train()
            if score >= 500:
                first.update(step=metrics["step"], time=metrics["time"])
        return False

    with tempfile.TemporaryDirectory() as tmp:
        train(spec, Path(tmp) / "run", "cpu", quiet=True, on_log=check)
        last = json.loads((Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()[-1])
        model = load_trained(spec, spec["env"], Path(tmp) / "run", CPU)
    final = evaluate(model, {**spec["env"], "num_envs": 20}, 20, 2000 + seed, CPU).summary()["return_mean"]
    return {
        "final": round(final, 1),
        "solve_step": first.get("step"),
        "solve_time": first.get("time"),
        "time": round(last["time"], 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "cartpole_sweep.jsonl"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    with open(args.out, "a") as out:
        for name, overrides in json.loads(Path(args.configs).read_text()).items():
            spec = pipeline.load(SPEC, [*overrides, "train.steps=100000", "train.log_interval=1"]).data
            for seed in args.seeds:
                row = {"name": name, "sets": overrides, "seed": seed, **run(spec, seed)}
                print(json.dumps(row), flush=True)
                out.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
