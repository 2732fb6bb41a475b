"""End-to-end PPO training throughput (environment + policy + update) and time to solve CartPole.

    python benchmarks/throughput.py                          # CPU: gymnasium sync, sfspec/CartPole-v1, SB3
    python benchmarks/throughput.py --device cuda --envs 4096 65536 --no-gym --no-sb3

Steps per second are measured over ``--updates`` PPO updates after one warm-up update, with the
64-64 MLP of specs/cartpole_fast.yaml and the PPO settings of massively parallel training
(THROUGHPUT_SETTINGS: a 16-step rollout, 4 epochs of 4 minibatches, close to rsl_rl's 24 steps,
5 epochs, 4 minibatches); the spec's own settings are tuned for 32 environments. The time to solve
uses the spec as it is: the training time (evaluation not counted) until a deterministic
evaluation on gymnasium's CartPole-v1 returns 500 (10 episodes).
Prints ratios against the first row; appends the figures to benchmarks/results.jsonl.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from sfspec import pipeline  # noqa: E402
from sfspec.runtime.train import train  # noqa: E402

THROUGHPUT_SETTINGS = ["train.rollout=16", "train.epochs=4", "train.minibatches=4", "train.lr_schedule=constant"]


def measure_sps(spec: dict, updates: int, device: str) -> float:
    """Steps per second over ``updates`` updates after a warm-up update."""
    steps_per_update = spec["env"]["num_envs"] * spec["train"]["rollout"]
    spec = {
        **spec,
        "train": {
            **spec["train"],
            "steps": steps_per_update * (updates + 1),
            "log_interval": 1,
            "checkpoint_interval": 10**9,
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        train(spec, Path(tmp) / "run", device, quiet=True)
        rows = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    measured = list(itertools.pairwise(rows))  # the first update is the warm-up
    steps = sum(r["step"] - prev["step"] for prev, r in measured)
    seconds = sum((r["step"] - prev["step"]) / r["sps"] for prev, r in measured)
    return steps / seconds


def solve_time(spec_path: str, overrides: list[str], device: str, seeds: list[int]) -> list[float | None]:
    """Training seconds until CartPole-v1 is solved, per seed (None: not within the budget)."""
    from learning import main as learning_main

    before = len((HERE / "results.jsonl").read_text().splitlines()) if (HERE / "results.jsonl").exists() else 0
    args = [
        spec_path,
        "--seeds",
        *map(str, seeds),
        "--eval-env",
        "CartPole-v1",
        "--solve",
        "500",
        "--episodes",
        "10",
        "--label",
        "throughput: time to solve",
    ]
    for o in overrides:
        args += ["--set", o]
    if device:
        args += ["--device", device]
    learning_main(args)
    line = (HERE / "results.jsonl").read_text().splitlines()[before]
    return [r["solved_time_s"] for r in json.loads(line)["runs"]]


def sb3_sps(steps: int = 20_000) -> float:
    """Stable-Baselines3 PPO with its rl-zoo CartPole settings, steps per second."""
    from sb3_cartpole import zoo_ppo
    from stable_baselines3.common.env_util import make_vec_env

    env = make_vec_env("CartPole-v1", n_envs=8, seed=0)
    model = zoo_ppo(env, 0)
    model.learn(total_timesteps=2048)
    start = time.perf_counter()
    model.learn(total_timesteps=steps, reset_num_timesteps=False)
    return steps / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--envs", type=int, nargs="+", default=[512, 4096])
    parser.add_argument("--updates", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--no-gym", action="store_true", help="skip the gymnasium vector env rows")
    parser.add_argument("--no-sb3", action="store_true", help="skip Stable-Baselines3")
    parser.add_argument("--no-solve", action="store_true", help="skip the time-to-solve runs")
    args = parser.parse_args()
    fast = str(ROOT / "specs" / "cartpole_fast.yaml")
    base = pipeline.load(fast, [*THROUGHPUT_SETTINGS, *args.overrides]).data
    rows: list[tuple[str, float]] = []
    if not args.no_sb3:
        rows.append(("SB3 PPO, 8 gymnasium envs (rl-zoo)", sb3_sps()))
    if not args.no_gym:
        for mode, n in (("sync", 8), ("sync", 64), ("vector_entry_point", 64), ("vector_entry_point", 256)):
            spec = {**base, "env": {"id": "CartPole-v1", "num_envs": n, "vectorization": mode}}
            label = "its own batched CartPole" if mode == "vector_entry_point" else f"{mode} vector env"
            rows.append((f"sfspec, gymnasium {label}, {n} envs", measure_sps(spec, 3, args.device)))
    for n in args.envs:
        spec = {**base, "env": {**base["env"], "num_envs": n}}
        rows.append(
            (f"sfspec, sfspec/CartPole-v1, {n} envs, {args.device}", measure_sps(spec, args.updates, args.device))
        )
    reference = rows[0][1]
    print(
        f"\nEnd-to-end PPO training steps/s on CartPole (64-64 MLP), {platform.machine()}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, {date.today()}"
    )
    if torch.cuda.is_available() and args.device.startswith("cuda"):
        print(f"GPU: {torch.cuda.get_device_name()}")
    for name, sps in rows:
        print(f"  {name:58} {sps:>14,.0f} steps/s   x{sps / reference:,.1f}")
    solved = None
    if not args.no_solve:
        solved = solve_time(fast, args.overrides, args.device, args.seeds)
        print(f"time to solve CartPole-v1 (seeds {args.seeds}): {solved} s")
    with (HERE / "results.jsonl").open("a") as f:
        f.write(
            json.dumps(
                {
                    "benchmark": "throughput",
                    "device": args.device,
                    "date": date.today().isoformat(),
                    "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                    "threads": torch.get_num_threads(),
                    "torch": torch.__version__,
                    "overrides": args.overrides,
                    "throughput_settings": THROUGHPUT_SETTINGS,
                    "rows": rows,
                    "solve_time_s": solved,
                }
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
