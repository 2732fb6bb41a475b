"""Side by side: Stable-Baselines3 PPO (rl-zoo CartPole hyperparameters) and sfspec, same task and budget.

    pip install stable-baselines3
    python benchmarks/sb3_cartpole.py [--seeds 0 1 2]
    python benchmarks/sb3_cartpole.py --zoo-process DIR   # one whole SB3 process (benchmarks/startup.py --vs-sb3)

Both train on CartPole-v1 for 100,000 steps and are evaluated deterministically on gymnasium's
CartPole-v1 (20 episodes). sfspec runs twice: on gymnasium's sync vector env, as SB3 does, and on
its bundled tensor CartPole (`sfspec/CartPole-v1`, same dynamics, tested for parity). The time to
solve is the training time until a deterministic evaluation first reaches 500 (evaluation time
not counted, for both). Prints both returns and the wall-time ratios, and for each sfspec spec
the time it takes to reach 500 as a fraction of SB3's wall time on the budget (target <= 0.25).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BUDGET = 100_000


def zoo_ppo(env, seed: int):
    """SB3 PPO with rl-zoo's ppo.yml CartPole-v1 settings."""
    from stable_baselines3 import PPO

    def linear(v):
        return lambda progress: progress * v

    return PPO(
        "MlpPolicy",
        env,
        n_steps=32,
        batch_size=256,
        gae_lambda=0.8,
        gamma=0.98,
        n_epochs=20,
        ent_coef=0.0,
        learning_rate=linear(1e-3),
        clip_range=linear(0.2),
        seed=seed,
        device="cpu",
    )


def sb3_run(seed: int) -> dict:
    """rl-zoo's ppo.yml CartPole-v1 entry: 8 envs, n_steps 32, batch 256, 20 epochs, lin 1e-3."""
    import gymnasium as gym
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    env = make_vec_env("CartPole-v1", n_envs=8, seed=seed)
    eval_env = gym.make("CartPole-v1")
    state = {"paused": 0.0, "solved": None}

    class SolveTimer(BaseCallback):
        def _on_rollout_end(self) -> None:
            if state["solved"] is not None:
                return
            t = time.perf_counter()
            mean, _ = evaluate_policy(self.model, eval_env, n_eval_episodes=10, deterministic=True)
            state["paused"] += time.perf_counter() - t
            if mean >= 500:
                state["solved"] = time.perf_counter() - state["start"] - state["paused"]

        def _on_step(self) -> bool:
            return True

    model = zoo_ppo(env, seed)
    state["start"] = time.perf_counter()
    model.learn(total_timesteps=BUDGET, callback=SolveTimer())
    train_time = time.perf_counter() - state["start"] - state["paused"]
    mean, std = evaluate_policy(model, eval_env, n_eval_episodes=20, deterministic=True)
    return {
        "return_mean": float(mean),
        "return_std": float(std),
        "train_time_s": train_time,
        "solve_time_s": state["solved"],
    }


def sfspec_run(spec_file: str, seed: int) -> dict:
    """sfspec on the same budget, with the same solve timer."""
    sys.argv = ["learning"]
    sys.path.insert(0, str(HERE))
    from learning import main as learning_main

    before = (HERE / "results.jsonl").read_text().splitlines() if (HERE / "results.jsonl").exists() else []
    common = [
        spec_file,
        "--seeds",
        str(seed),
        "--eval-env",
        "CartPole-v1",
        "--set",
        f"train.steps={BUDGET}",
        "--label",
        "sb3 comparison",
    ]
    learning_main([*common, "--solve", "500"])
    # the solve run stops early; train once more on the full budget for the final return
    learning_main(common)
    lines = (HERE / "results.jsonl").read_text().splitlines()[len(before) :]
    solve, full = (json.loads(line)["runs"][0] for line in lines)
    return {
        "return_mean": full["eval_return_mean"],
        "return_std": full["eval_return_std"],
        "train_time_s": full["train_time_s"],
        "solve_time_s": solve["solved_time_s"],
    }


def zoo_process(save_dir: str, seed: int = 0) -> int:
    """What ``python -m rl_zoo3.train --algo ppo --env CartPole-v1`` does, as one process: train, save."""
    from stable_baselines3.common.env_util import make_vec_env

    model = zoo_ppo(make_vec_env("CartPole-v1", n_envs=8, seed=seed), seed)
    model.learn(total_timesteps=BUDGET)
    model.save(str(Path(save_dir) / "ppo_cartpole"))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--zoo-process", metavar="DIR", help="only train SB3 once and save to DIR (whole process)")
    args = parser.parse_args()
    if args.zoo_process:
        return zoo_process(args.zoo_process, args.seeds[0])
    torch.set_num_threads(2)
    rows = []
    for seed in args.seeds:
        np.random.seed(seed)
        row = {
            "seed": seed,
            "sb3": sb3_run(seed),
            "sfspec_gym_sync": sfspec_run(str(ROOT / "specs" / "cartpole.yaml"), seed),
            "sfspec_tensor": sfspec_run(str(ROOT / "specs" / "cartpole_fast.yaml"), seed),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    def mean(key: str, field: str) -> float | None:
        values = [r[key][field] for r in rows if r[key][field] is not None]
        return statistics.mean(values) if values else None

    print(
        f"\nCartPole-v1, {BUDGET:,} steps, seeds {args.seeds}, {platform.machine()}, torch {torch.__version__}, "
        f"{date.today()}"
    )
    print(f"{'':22}{'return':>10}{'train s':>10}{'solve s':>10}")
    for key in ("sb3", "sfspec_gym_sync", "sfspec_tensor"):
        solve = mean(key, "solve_time_s")
        print(
            f"{key:22}{mean(key, 'return_mean'):10.1f}{mean(key, 'train_time_s'):10.1f}"
            f"{solve if solve is not None else float('nan'):10.1f}"
        )
    for key in ("sfspec_gym_sync", "sfspec_tensor"):
        # the target: the time sfspec takes to reach 500 against SB3's wall time on the budget
        reached = [r[key]["solve_time_s"] / r["sb3"]["train_time_s"] for r in rows if r[key]["solve_time_s"]]
        print(
            f"{key} reaches 500 after {[round(x, 3) for x in reached]} of SB3's wall time per seed "
            f"({len(reached)} of {len(rows)} seeds solved; target <= 0.25)"
        )
    for key in ("sfspec_gym_sync", "sfspec_tensor"):
        a, b = mean(key, "solve_time_s"), mean("sb3", "solve_time_s")
        ratio = a / b if a and b else float("nan")
        print(
            f"time to solve, {key} / sb3: {ratio:.3f}   (train time ratio "
            f"{mean(key, 'train_time_s') / mean('sb3', 'train_time_s'):.3f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
