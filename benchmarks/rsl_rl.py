"""sfspec against rsl_rl, side by side: end-to-end PPO steps/s on the same tensor env, network and PPO shape.

    pip install rsl-rl-lib                     # benchmark-only dependency (5.5.1 when this was written)
    python benchmarks/rsl_rl.py --envs 1024 4096 --threads 1 2 --rounds 5

Both train ``sfspec/Pendulum-v1`` (the same batched torch env; rsl_rl sees it through its ``VecEnv``
interface) with a 64-64 tanh actor and a separate 64-64 tanh critic in torch's default initialisation,
observation normalisation, a state-independent Gaussian (log-std learned, std 1.0 at first), a 16-step
rollout, 4 epochs of 4 minibatches with advantages normalised per minibatch, lr 1e-3 adapted to a KL
of 0.01, gamma 0.95, lambda 0.95, value clipping 0.2, gradient norm 1.0 (actor and critic apart), no
entropy bonus, on the CPU. What still differs, by design: rsl_rl adapts the lr after every minibatch
from the Gaussians' exact KL, sfspec after every epoch from the sampled estimate; rsl_rl bootstraps a
time-out from the value before the step, sfspec from the final observation's; Adam's eps (1e-8 against
1e-5) and the observation normaliser's epsilon. Each measurement is a fresh run: one warm-up update,
then ``--updates`` timed updates. Contenders alternate within each round (who goes first alternates
too); the table gives medians and sfspec / rsl_rl. ``--learn`` instead trains both for
``--learn-steps`` and prints the mean training return of the whole episodes that end in the last 10%
of updates (at least one episode's worth; all envs start together), counted alike on both sides: a
check that both learn, not a benchmark.
Appends the figures to benchmarks/results.jsonl.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from throughput import measure_sps  # noqa: E402

# This file is named after the package it compares with: take this folder off the path again, so
# that `import rsl_rl` finds the package, not this script.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
if getattr(sys.modules.get("rsl_rl"), "__file__", None) == __file__:
    del sys.modules["rsl_rl"]

from sfspec.envs.factory import make_tensor_env  # noqa: E402
from sfspec.runtime.train import train  # noqa: E402

ENV_ID = "sfspec/Pendulum-v1"
ROLLOUT, EPOCHS, MINIBATCHES, LR, KL, GAMMA, LAM, CLIP, GRAD_NORM = 16, 4, 4, 1e-3, 0.01, 0.95, 0.95, 0.2, 1.0


def sfspec_spec(num_envs: int, seed: int = 0) -> dict:
    """The sfspec side as a spec (value_coef 2.0: sfspec halves the squared error, rsl_rl does not)."""
    return {
        "env": {"id": ENV_ID, "num_envs": num_envs},
        "model": {
            "normalize_obs": True,
            "init": {"weights": "default"},  # rsl_rl's MLP keeps torch's default nn.Linear initialisation
            "encoder": [{"mlp": {"sizes": [64, 64], "activation": "tanh"}}],
            "action": {"std": {"init": 1.0, "mode": "state_independent"}, "bounds": "clip"},
        },
        "train": {
            "device": "cpu",
            "seed": seed,
            "rollout": ROLLOUT,
            "epochs": EPOCHS,
            "minibatches": MINIBATCHES,
            "lr": LR,
            "lr_schedule": "kl_adaptive",
            "desired_kl": KL,
            "gamma": GAMMA,
            "gae_lambda": LAM,
            "value_clip": CLIP,
            "value_coef": 2.0,
            "entropy_coef": 0.0,
            "max_grad_norm": GRAD_NORM,
        },
    }


# sfspec learns the log of the std, within [1e-6, 10]; rsl_rl's default learns the std itself.
GAUSSIAN = {"class_name": "GaussianDistribution", "init_std": 1.0, "std_type": "log", "std_range": [1e-6, 10.0]}


def rsl_cfg() -> dict:
    """rsl_rl's runner configuration for the same shape."""
    mlp = {"class_name": "MLPModel", "hidden_dims": [64, 64], "activation": "tanh", "obs_normalization": True}
    return {
        "num_steps_per_env": ROLLOUT,
        "save_interval": 10**9,
        "obs_groups": {"actor": ["policy"], "critic": ["policy"]},
        "algorithm": {
            "class_name": "PPO",
            "num_learning_epochs": EPOCHS,
            "num_mini_batches": MINIBATCHES,
            "learning_rate": LR,
            "schedule": "adaptive",
            "desired_kl": KL,
            "gamma": GAMMA,
            "lam": LAM,
            "clip_param": CLIP,
            "use_clipped_value_loss": True,
            "value_loss_coef": 1.0,
            "entropy_coef": 0.0,
            "max_grad_norm": GRAD_NORM,
            "normalize_advantage_per_mini_batch": True,  # as sfspec does
        },
        "actor": {**mlp, "distribution_cfg": GAUSSIAN},
        "critic": mlp,
    }


class RslVecEnv:
    """sfspec's tensor Pendulum through rsl_rl's ``VecEnv`` interface (observation group 'policy')."""

    def __init__(self, num_envs: int, seed: int):
        self.env = make_tensor_env(ENV_ID, num_envs, device="cpu", seed=seed)
        self.num_envs, self.num_actions, self.device, self.cfg = num_envs, 1, "cpu", {}
        self.max_episode_length = self.env.max_episode_steps
        self.obs, _ = self.env.reset(seed=seed)
        # Episode returns for the learning check (rsl_rl's own buffers are filled only with a log dir):
        # (step per env at which it ended, return), summed from the episode's first step.
        self.steps, self.finished, self.running = 0, [], torch.zeros(num_envs)

    @property
    def episode_length_buf(self) -> torch.Tensor:
        return self.env.elapsed_steps

    @episode_length_buf.setter
    def episode_length_buf(self, value: torch.Tensor) -> None:
        self.env.elapsed_steps.copy_(value)

    def get_observations(self):
        """The current observations as a TensorDict."""
        from tensordict import TensorDict

        return TensorDict({"policy": self.obs}, batch_size=[self.num_envs])

    def step(self, actions: torch.Tensor):
        """One batched step: observations, rewards, dones and the time-outs for bootstrapping."""
        self.obs, reward, terminated, truncated, _ = self.env.step(actions)
        done = terminated | truncated
        self.steps += 1
        self.running += reward
        self.finished += [(self.steps, r) for r in self.running[done].tolist()]
        self.running[done] = 0.0
        return self.get_observations(), reward, done.long(), {"time_outs": truncated.float()}


def rsl_runner(num_envs: int, seed: int):
    """A fresh rsl_rl OnPolicyRunner on the env (its model printout swallowed)."""
    from rsl_rl.runners import OnPolicyRunner

    torch.manual_seed(seed)
    env = RslVecEnv(num_envs, seed)
    with contextlib.redirect_stdout(io.StringIO()):
        runner = OnPolicyRunner(env, rsl_cfg(), log_dir=None, device="cpu")
    return runner, env


def rsl_sps(num_envs: int, updates: int) -> float:
    """rsl_rl's steps per second over ``updates`` updates after a warm-up update."""
    runner, _ = rsl_runner(num_envs, 0)
    runner.learn(1)
    start = time.perf_counter()
    runner.learn(updates)
    return updates * ROLLOUT * num_envs / (time.perf_counter() - start)


def sfspec_sps(num_envs: int, updates: int) -> float:
    """sfspec's steps per second (the runner's own clock) over ``updates`` updates after a warm-up update."""
    return measure_sps(sfspec_spec(num_envs), updates, "cpu")


CONTENDERS = {"sfspec": sfspec_sps, "rsl_rl": rsl_sps}


def compare(envs: list[int], threads: list[int], rounds: int, updates: int) -> list[dict]:
    """Alternating rounds per (threads, envs); medians and sfspec / rsl_rl."""
    rows = []
    for t in threads:
        torch.set_num_threads(t)
        for n in envs:
            runs: dict[str, list[float]] = {name: [] for name in CONTENDERS}
            for r in range(rounds):
                order = list(CONTENDERS) if r % 2 == 0 else list(reversed(CONTENDERS))
                for name in order:
                    runs[name].append(CONTENDERS[name](n, updates))
                print(
                    f"  threads {t}, {n} envs, round {r + 1}/{rounds}: "
                    + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in runs.items()),
                    file=sys.stderr,
                )
            med = {k: statistics.median(v) for k, v in runs.items()}
            rows.append({"threads": t, "envs": n, "runs": runs, "median": med, "ratio": med["sfspec"] / med["rsl_rl"]})
    return rows


def learn_check(num_envs: int, steps: int, seeds: list[int]) -> dict[str, list[float]]:
    """Mean training return of the episodes ending in the last updates (10%, at least one episode), per seed.

    Both sides count the same episodes: whole episodes (from their first step) that end in the last
    ``last`` updates, weighted alike (every episode once).
    """
    out: dict[str, list[float]] = {"sfspec": [], "rsl_rl": []}
    updates = max(1, steps // (ROLLOUT * num_envs))
    episode = make_tensor_env(ENV_ID, 1, device="cpu").max_episode_steps
    last = min(updates, max(updates // 10, math.ceil(episode / ROLLOUT)))
    for seed in seeds:
        spec = sfspec_spec(num_envs, seed)
        spec["train"].update(steps=updates * ROLLOUT * num_envs, log_interval=1, checkpoint_interval=10**9)
        with tempfile.TemporaryDirectory() as tmp:
            train(spec, Path(tmp) / "run", "cpu", quiet=True)
            rows = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
        tail = [(r["return_mean"], r["episodes"]) for r in rows[-last:] if r["episodes"]]
        out["sfspec"].append(sum(m * n for m, n in tail) / sum(n for _, n in tail))
        runner, env = rsl_runner(num_envs, seed)
        runner.learn(updates)
        window = (updates - last) * ROLLOUT  # episodes ending after this step per env
        out["rsl_rl"].append(statistics.mean(r for step, r in env.finished if step > window))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--updates", type=int, default=10)
    parser.add_argument("--learn", action="store_true", help="the learning check instead of the timing")
    parser.add_argument("--learn-steps", type=int, default=2_000_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    from importlib.metadata import version

    import rsl_rl  # noqa: F401 (fail early, with pip's name, when it is missing)

    versions = {"torch": torch.__version__, "rsl-rl-lib": version("rsl-rl-lib")}
    head = f"{platform.machine()}, {versions}, CPU, {date.today()}"
    if args.learn:
        torch.set_num_threads(args.threads[0])
        result = {f"{n} envs": learn_check(n, args.learn_steps, args.seeds) for n in args.envs}
        print(f"\nMean training return at the end of {args.learn_steps:,} steps ({head}, {args.threads[0]} threads):")
        for key, per in result.items():
            print(f"  {key}: " + ", ".join(f"{k} {[round(v, 1) for v in vals]}" for k, vals in per.items()))
        record = {"benchmark": "rsl_rl learning", "steps": args.learn_steps, "seeds": args.seeds, "result": result}
    else:
        rows = compare(args.envs, args.threads, args.rounds, args.updates)
        print(f"\nEnd-to-end PPO steps/s on {ENV_ID}, medians of {args.rounds} alternating rounds ({head}):")
        print(f"  {'threads':>7} {'envs':>6} {'sfspec':>10} {'rsl_rl':>10}  sfspec/rsl_rl")
        for r in rows:
            m = r["median"]
            print(f"  {r['threads']:>7} {r['envs']:>6} {m['sfspec']:>10,.0f} {m['rsl_rl']:>10,.0f}  x{r['ratio']:.2f}")
        record = {"benchmark": "rsl_rl", "rounds": args.rounds, "updates": args.updates, "rows": rows}
    record.update(date=date.today().isoformat(), machine=platform.machine(), **versions)
    with (HERE / "results.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
