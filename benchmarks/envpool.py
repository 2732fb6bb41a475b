"""HalfCheetah-v5 on CPU: wall time per run for sfspec with EnvPool, sfspec with gymnasium async, and SB3 PPO.

    pip install 'sfspec[envpool]' stable-baselines3
    python benchmarks/envpool.py --steps 1000000 --rounds 3          # the full measurement (a quiet machine)
    python benchmarks/envpool.py --steps 100000 --rounds 1           # a provisional one

Each run is a whole process (imports, start-up and training), timed from outside:
- ``envpool``: ``sfspec train specs/halfcheetah.yaml --set env.vectorization=envpool`` (8 envs, rollout 256,
  10 epochs of 8 minibatches, 64-64 tanh);
- ``async``: the same spec on gymnasium's ``AsyncVectorEnv`` (8 worker processes);
- ``sb3``: Stable-Baselines3 PPO with rl-zoo's tuned HalfCheetah entry (hyperparams/ppo.yml
  ``HalfCheetah-v3``, the newest it tunes; run here on v5): 1 env with VecNormalize, n_steps 512, batch 64,
  20 epochs, lr 2.0633e-5, 256-256 ReLU actor and critic, log_std_init -2; one torch thread
  (``--sb3-threads``; sfspec's ``train.threads: auto`` picks its own), since torch's default of one per
  core is several times slower when the cores are shared.
Contenders alternate within each round, and who goes first rotates; the table gives medians.
Then the returns check: the last EnvPool-trained policy is evaluated deterministically on gymnasium's
HalfCheetah-v5 and on EnvPool's (``--episodes`` each, other start states: two generators); the two means
should agree within their standard errors' noise. Appends the figures to benchmarks/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SPEC = ROOT / "specs" / "halfcheetah.yaml"
CONTENDERS = ("envpool", "async", "sb3")


def sfspec_command(vectorization: str, steps: int, run_dir: Path, seed: int) -> list[str]:
    """The sfspec training command of one contender."""
    sets = [f"env.vectorization={vectorization}", f"train.steps={steps}", f"train.seed={seed}"]
    return [sys.executable, "-m", "sfspec.cli", "train", str(SPEC), "--run-dir", str(run_dir), "--quiet"] + [
        arg for s in sets for arg in ("--set", s)
    ]


def sb3_train(steps: int, seed: int, threads: int) -> None:
    """SB3 PPO with rl-zoo's tuned HalfCheetah hyperparameters (one process: this one)."""
    import gymnasium as gym
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize
    from torch import nn

    if threads:  # torch's default (one per core) is slow when the cores are shared: docs/runtime.md#cpu-threads
        torch.set_num_threads(threads)
    env = VecNormalize(DummyVecEnv([lambda: gym.make("HalfCheetah-v5")]))
    model = PPO(
        "MlpPolicy",
        env,
        n_steps=512,
        batch_size=64,
        gamma=0.98,
        learning_rate=2.0633e-05,
        ent_coef=0.000401762,
        clip_range=0.1,
        n_epochs=20,
        gae_lambda=0.92,
        max_grad_norm=0.8,
        vf_coef=0.58096,
        policy_kwargs={
            "log_std_init": -2,
            "ortho_init": False,
            "activation_fn": nn.ReLU,
            "net_arch": {"pi": [256, 256], "vf": [256, 256]},
        },
        seed=seed,
        device="cpu",
    )
    model.learn(total_timesteps=steps)
    env.close()


def timed_run(name: str, steps: int, seed: int, run_dir: Path, sb3_threads: int) -> float:
    """Wall seconds of one whole training process."""
    if name == "sb3":
        command = [sys.executable, __file__, "--sb3-process", "--steps", str(steps), "--seed", str(seed)]
        command += ["--sb3-threads", str(sb3_threads)]
    else:
        command = sfspec_command(name, steps, run_dir, seed)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds


def evaluate(run_dir: Path, vectorization: str, episodes: int) -> dict:
    """Deterministic returns of a trained run on gymnasium's env (sync) or EnvPool's."""
    command = [sys.executable, "-m", "sfspec.cli", "eval", str(run_dir), "--episodes", str(episodes), "--json"]
    command += ["--set", f"env.vectorization={vectorization}", "--set", f"env.num_envs={min(episodes, 8)}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def returns_check(run_dir: Path, episodes: int) -> dict:
    """The same policy on both simulators; the difference of the means against its standard error."""
    on = {v: evaluate(run_dir, v, episodes) for v in ("sync", "envpool")}
    diff = on["envpool"]["return_mean"] - on["sync"]["return_mean"]
    stderr = (sum(r["return_std"] ** 2 / r["episodes"] for r in on.values())) ** 0.5
    return {"gymnasium": on["sync"], "envpool": on["envpool"], "difference": diff, "stderr": stderr}


def _commit() -> str:
    """The checkout's commit (short), or '' outside git."""
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    """Run the rounds, print the table and the returns check, append them to results.jsonl."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=list(CONTENDERS))
    parser.add_argument("--episodes", type=int, default=20, help="per simulator in the returns check (0: skip)")
    parser.add_argument("--results", type=Path, default=HERE / "results.jsonl", help="where the record is appended")
    parser.add_argument("--sb3-threads", type=int, default=1, help="torch threads for SB3 (0: torch's default)")
    parser.add_argument("--sb3-process", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sb3_process:
        sb3_train(args.steps, args.seed, args.sb3_threads)
        return 0
    times: dict[str, list[float]] = {name: [] for name in args.contenders}
    with tempfile.TemporaryDirectory() as tmp:
        last_envpool = None
        for r in range(args.rounds):
            order = args.contenders[r % len(args.contenders) :] + args.contenders[: r % len(args.contenders)]
            for name in order:
                run_dir = Path(tmp) / f"{name}-{r}"
                times[name].append(timed_run(name, args.steps, args.seed + r, run_dir, args.sb3_threads))
                print(f"round {r + 1}: {name:8s} {times[name][-1]:8.1f} s", flush=True)
                last_envpool = run_dir if name == "envpool" else last_envpool
        check = returns_check(last_envpool, args.episodes) if args.episodes and last_envpool else None
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(f"\nHalfCheetah-v5, {args.steps:,} steps, {args.rounds} round(s), whole processes, medians:")
    for name, median in medians.items():
        ratio = f"  (x{medians['sb3'] / median:.2f} SB3's speed)" if "sb3" in medians else ""
        print(f"  {name:8s} {median:8.1f} s  {args.steps / median:7.0f} steps/s{ratio}")
    if check:
        g, e = check["gymnasium"], check["envpool"]
        print(f"returns: gymnasium {g['return_mean']:.1f} +- {g['return_std']:.1f}, envpool {e['return_mean']:.1f}")
        print(f"  +- {e['return_std']:.1f} ({g['episodes']} episodes each): difference {check['difference']:.1f}")
        print(f"  against a standard error of {check['stderr']:.1f}")
    record = {
        "benchmark": "envpool",
        "commit": _commit(),
        "steps": args.steps,
        "rounds": args.rounds,
        "sb3_threads": args.sb3_threads,
        "times_s": times,
        "medians_s": medians,
        "returns_check": check,
        "machine": f"{platform.machine()} {os.cpu_count()} threads",
        "date": date.today().isoformat(),
    }
    with open(args.results, "a") as out:
        out.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
