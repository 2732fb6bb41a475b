"""Sim-to-sim: do randomised physics, action delay and sensor noise in training pay off on another plant?

For each task and seed, train the spec twice on sfspec's tensor env (plain, and robust: ``env.randomize``
plus ``env.delay.action`` plus ``env.noise``), export each run (``sfspec export``), then deploy each
bundle through ``sfspec.export.runner.PolicyRunner`` (ONNX Runtime) on plants the training never saw:

* Pendulum: **gymnasium's own** ``Pendulum-v1`` (not the tensor env), nominal, with another mass and
  length (``env.unwrapped.m`` / ``.l``), with an action delay of 1-2 steps (drawn per episode, a
  wrapper here), with gaussian sensor noise (a wrapper here), and all three at once.
* Reach: there is no gymnasium Reach, so its bundles run on ``sfspec/Reach-v0`` made directly
  (``make_tensor_env``) with its parameters set through ``TensorEnv.set_parameters``, behind the
  same delay and noise wrappers.

Every policy meets the same initial states, delays and noise draws (fixed evaluation seeds), so the
plain-versus-robust differences are paired. Usage::

    python benchmarks/sim_to_sim.py                  # Pendulum and Reach, seeds 0 1 2 (~30 min on 2 cores)
    python benchmarks/sim_to_sim.py --tasks pendulum --seeds 0 1 2 3 4
    python benchmarks/sim_to_sim.py --quick          # the whole pipeline on tiny budgets, about a minute

Training and export go through the CLI's own entry point (``sfspec.cli.main``, in process); the
command lines are printed and recorded. A full run appends one JSON line to
``benchmarks/sim_to_sim/results.jsonl`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import gymnasium
import numpy as np
import torch

from sfspec.cli import main as sfspec_main
from sfspec.envs import make_tensor_env
from sfspec.export.runner import PolicyRunner

HERE = Path(__file__).resolve().parent / "sim_to_sim"
RESULTS = HERE / "results.jsonl"
EVAL_SEED = 100_000  # evaluation seeds start here: never a training seed
Obs = dict[str, np.ndarray]


# --------------------------------------------------------------------------- plants (batched, numpy)


class GymPendulum:
    """``n`` copies of gymnasium's ``Pendulum-v1`` stepped together, with the mass and length given."""

    def __init__(self, n: int, mass: float, length: float):
        self.envs = [gymnasium.make("Pendulum-v1") for _ in range(n)]
        for env in self.envs:
            env.unwrapped.m, env.unwrapped.l = mass, length
        self.num, self.steps = n, self.envs[0].spec.max_episode_steps
        self.action_shape = self.envs[0].action_space.shape

    def reset(self, seed: int) -> Obs:
        """Episode starts, env ``i`` seeded with ``seed + i``."""
        return {"obs": np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(self.envs)])}

    def step(self, actions: np.ndarray) -> tuple[Obs, np.ndarray]:
        """One step of every env; returns the observations and rewards."""
        out = [env.step(a.astype(np.float32)) for env, a in zip(self.envs, actions, strict=True)]
        return {"obs": np.stack([o[0] for o in out])}, np.array([o[1] for o in out], dtype=np.float64)


class TensorPlant:
    """A bundled tensor env made directly (``make_tensor_env``) with fixed physical parameters."""

    def __init__(self, env_id: str, n: int, params: dict[str, float]):
        self.env = make_tensor_env(env_id, num_envs=n, seed=0)
        self.env.set_parameters(params)  # no randomisation is set, so resets keep these values
        self.num, self.steps = n, self.env.max_episode_steps
        self.action_shape = self.env.single_action_space.shape

    def reset(self, seed: int) -> Obs:
        """Episode starts for every row, from the env's generator seeded with ``seed``."""
        return _numpy(self.env.reset(seed=seed)[0])

    def step(self, actions: np.ndarray) -> tuple[Obs, np.ndarray]:
        """One step of every row; returns the observations and rewards."""
        obs, reward, *_ = self.env.step(torch.as_tensor(actions, dtype=torch.float32))
        return _numpy(obs), reward.double().numpy()


def _numpy(obs) -> Obs:
    """A tensor env's observation (a tensor or a dict of them) as a dict of numpy arrays."""
    if isinstance(obs, dict):
        return {k: v.numpy() for k, v in obs.items()}
    return {"obs": obs.numpy()}


class ActionDelay:
    """The plant executes the action chosen ``d`` steps earlier; ``d`` drawn per row and episode in [low, high].

    Pending actions at an episode's start are zeros (the torque-free action), as in sfspec's ``env.delay``.
    """

    def __init__(self, plant, low: int, high: int, seed: int):
        self.plant, self.low, self.high = plant, low, high
        self.num, self.steps, self.action_shape = plant.num, plant.steps, plant.action_shape
        self.rng = np.random.default_rng(seed)

    def reset(self, seed: int) -> Obs:
        """Reset the plant; draw each row's delay, empty the pipeline."""
        self.delay = self.rng.integers(self.low, self.high + 1, self.num)
        self.pending = np.zeros((self.high + 1, self.num, *self.action_shape), dtype=np.float32)
        return self.plant.reset(seed)

    def step(self, actions: np.ndarray) -> tuple[Obs, np.ndarray]:
        """Queue ``actions``; the plant gets each row's action from its delay's steps ago."""
        self.pending = np.concatenate([actions[None].astype(np.float32), self.pending[:-1]])
        return self.plant.step(self.pending[self.delay, np.arange(self.num)])


class SensorNoise:
    """Gaussian noise (``std`` per observation key, broadcast or per component) on what the policy sees."""

    def __init__(self, plant, std: dict[str, list[float]], seed: int):
        self.plant, self.std = plant, {k: np.asarray(v, dtype=np.float32) for k, v in std.items()}
        self.num, self.steps, self.action_shape = plant.num, plant.steps, plant.action_shape
        self.rng = np.random.default_rng(seed)

    def reset(self, seed: int) -> Obs:
        """Reset the plant; noisy first observations."""
        return self._noisy(self.plant.reset(seed))

    def step(self, actions: np.ndarray) -> tuple[Obs, np.ndarray]:
        """Step the plant; noisy observations, true rewards."""
        obs, reward = self.plant.step(actions)
        return self._noisy(obs), reward

    def _noisy(self, obs: Obs) -> Obs:
        out = dict(obs)
        for key, std in self.std.items():
            out[key] = (obs[key] + self.rng.normal(size=obs[key].shape) * std).astype(obs[key].dtype)
        return out


# --------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class Task:
    """One benchmark task: its two specs, its plants and what the table says about them."""

    name: str
    plain: str
    robust: str
    make: Callable[[int, dict[str, float]], object]  # (episodes, physical parameters) -> plant
    nominal: dict[str, float]
    perturbed: dict[str, float]
    noise: dict[str, list[float]]
    delay: tuple[int, int] = (1, 2)
    plant_name: str = ""
    quick_sets: list[str] = field(default_factory=list)


TASKS = {
    "pendulum": Task(
        name="pendulum",
        plain="pendulum_plain.yaml",
        robust="pendulum_robust.yaml",
        make=lambda n, p: GymPendulum(n, p["mass"], p["length"]),
        nominal={"mass": 1.0, "length": 1.0},
        perturbed={"mass": 1.2, "length": 1.1},
        noise={"obs": [0.02, 0.02, 0.1]},
        plant_name="gymnasium Pendulum-v1",
        quick_sets=["train.steps=30000", "env.num_envs=64"],
    ),
    "reach": Task(
        name="reach",
        plain="reach_plain.yaml",
        robust="reach_robust.yaml",
        make=lambda n, p: TensorPlant("sfspec/Reach-v0", n, p),
        nominal={"link_length": 0.5, "gain": 10.0, "damping": 1.0},
        perturbed={"link_length": 0.6, "gain": 6.0, "damping": 2.0},
        noise={"proprio": [0.02, 0.02, 0.02, 0.02, 0.1, 0.1], "target_seen": [0.02]},
        plant_name="sfspec/Reach-v0 made directly (no gymnasium Reach exists)",
        quick_sets=["train.steps=20000", "env.num_envs=64"],
    ),
}


def conditions(task: Task) -> dict[str, tuple[dict[str, float], bool, bool]]:
    """Plant conditions: name -> (physical parameters, action delay?, sensor noise?)."""
    return {
        "nominal": (task.nominal, False, False),
        "physics": (task.perturbed, False, False),
        "delay": (task.nominal, True, False),
        "noise": (task.nominal, False, True),
        "perturbed": (task.perturbed, True, True),
    }


def make_plant(task: Task, condition: str, episodes: int, seed: int):
    """The plant for ``condition``: physics, then the action delay, then the sensor noise."""
    params, delayed, noisy = conditions(task)[condition]
    plant = task.make(episodes, params)
    if delayed:
        plant = ActionDelay(plant, *task.delay, seed=seed + 1)
    if noisy:
        plant = SensorNoise(plant, task.noise, seed=seed + 2)
    return plant


def deploy(bundle: Path, plant, seed: int) -> list[float]:
    """One batch of episodes (one per plant row) with the bundle in ONNX Runtime; the return of each."""
    runner = PolicyRunner(bundle, batch=plant.num)
    names = [o["name"] for o in runner.obs]
    obs = plant.reset(seed)
    total = np.zeros(plant.num)
    for _ in range(plant.steps):
        action = runner.act({name: obs[name] for name in names})
        obs, reward = plant.step(np.asarray(action))
        total += reward
    return total.tolist()


# --------------------------------------------------------------------------- training and export


def sfspec(*argv: str) -> None:
    """Run one ``sfspec`` command in process; raise if it fails."""
    print("$ sfspec " + " ".join(argv), flush=True)
    status = sfspec_main(list(argv))
    if status != 0:
        raise SystemExit(f"sfspec {argv[0]} failed with status {status}")


def train_and_export(spec: Path, seed: int, work: Path, sets: list[str]) -> tuple[Path, float]:
    """Train ``spec`` with ``seed`` and export it to ONNX; returns the bundle and the training time (s)."""
    run = work / f"{spec.stem}-seed{seed}"
    overrides = [arg for s in [f"train.seed={seed}", *sets] for arg in ("--set", s)]
    start = time.perf_counter()
    sfspec("train", str(spec), "--run-dir", str(run), "-q", *overrides)
    train_time = time.perf_counter() - start
    sfspec("export", str(run), "--formats", "onnx")
    return run / "bundle", train_time


# --------------------------------------------------------------------------- the benchmark


def run_task(task: Task, args: argparse.Namespace, work: Path) -> dict:
    """Train, export and deploy both policies of ``task`` for every seed; every cell's returns."""
    sets = list(args.overrides) + (task.quick_sets if args.quick else [])
    cells: dict[str, dict[str, dict[str, list[float]]]] = {policy: {} for policy in args.policies}
    train_times: dict[str, list[float]] = {policy: [] for policy in args.policies}
    for seed in args.seeds:
        for policy in args.policies:
            spec = HERE / (task.plain if policy == "plain" else task.robust)
            bundle, seconds = train_and_export(spec, seed, work, sets)
            train_times[policy].append(round(seconds, 1))
            for condition in conditions(task):
                plant = make_plant(task, condition, args.episodes, EVAL_SEED)
                returns = deploy(bundle, plant, EVAL_SEED)
                cells[policy].setdefault(condition, {})[str(seed)] = [round(r, 2) for r in returns]
            means = {c: round(statistics.mean(r[str(seed)]), 1) for c, r in cells[policy].items()}
            print(json.dumps({"task": task.name, "policy": policy, "seed": seed, **means}), flush=True)
    return {
        "task": task.name,
        "plant": task.plant_name,
        "specs": [task.plain, task.robust],
        "overrides": sets,
        "nominal": task.nominal,
        "perturbed": task.perturbed,
        "noise_std": task.noise,
        "action_delay": list(task.delay),
        "train_time_s": train_times,
        "returns": cells,
    }


def seed_means(cell: dict[str, list[float]]) -> list[float]:
    """The mean return over episodes of each seed."""
    return [statistics.mean(returns) for returns in cell.values()]


def describe(values: list[float]) -> str:
    """Mean over seeds, with the per-seed values."""
    per_seed = ", ".join(f"{v:.0f}" for v in values)
    return f"**{statistics.mean(values):.0f}** ({per_seed})"


def table(result: dict) -> str:
    """A markdown table: one row per policy and the robust-minus-plain margin, one column per plant condition."""
    policies = list(result["returns"])
    names = list(result["returns"][policies[0]])
    lines = ["| policy | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for policy in policies:
        cells = [describe(seed_means(result["returns"][policy][c])) for c in names]
        lines.append(f"| {policy} | " + " | ".join(cells) + " |")
    if policies != ["plain", "robust"]:
        return "\n".join(lines)
    margins = []
    for c in names:
        diff = [
            r - p
            for r, p in zip(
                seed_means(result["returns"]["robust"][c]), seed_means(result["returns"]["plain"][c]), strict=True
            )
        ]
        margins.append(f"{statistics.mean(diff):+.0f} ({', '.join(f'{d:+.0f}' for d in diff)})")
    lines.append("| robust − plain | " + " | ".join(margins) + " |")
    return "\n".join(lines)


def commit() -> str:
    """The checkout's commit (short hash, ``+dirty`` when the package or this benchmark has changes), or ``unknown``."""
    root = HERE.parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True, cwd=root
        ).stdout.strip()
        paths = [
            "sfspec",
            "benchmarks/sim_to_sim.py",
            *(f"benchmarks/sim_to_sim/{p.name}" for p in HERE.glob("*.yaml")),
        ]
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", *paths], capture_output=True, text=True, check=True, cwd=root
        ).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=["pendulum", "reach"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--policies", nargs="+", choices=["plain", "robust"], default=["plain", "robust"])
    parser.add_argument("--episodes", type=int, default=50, help="evaluation episodes per cell and seed")
    parser.add_argument("--set", action="append", default=[], dest="overrides", help="a spec override for every run")
    parser.add_argument("--quick", action="store_true", help="tiny budgets, one seed, 8 episodes: a smoke check")
    parser.add_argument("--commit", default=None, help="the commit to record (default: git rev-parse HEAD)")
    parser.add_argument("--work", help="keep runs and bundles here (default: a temporary directory)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: see the note below)")
    args = parser.parse_args(argv)
    # One thread: on a shared machine, two intra-op threads that spin-wait for each other slowed
    # training a hundredfold when other jobs held the cores; one thread is also reproducible.
    torch.set_num_threads(args.threads)
    if args.quick:
        args.seeds, args.episodes = args.seeds[:1], min(args.episodes, 8)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        results = [run_task(TASKS[name], args, work) for name in args.tasks]
    record = {
        "benchmark": "sim_to_sim",
        "command": " ".join(["python", "benchmarks/sim_to_sim.py", *sys.argv[1:]]),
        "quick": args.quick,
        "seeds": args.seeds,
        "episodes": args.episodes,
        "eval_seed": EVAL_SEED,
        "commit": args.commit or commit(),
        "date": date.today().isoformat(),
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads".strip(),
        "wall_time_s": round(time.perf_counter() - start, 1),
        "tasks": results,
    }
    if not args.quick:
        with RESULTS.open("a") as f:
            f.write(json.dumps(record) + "\n")
    for result in results:
        print(
            f"\n{result['task']} on {result['plant']} (mean return over {args.episodes} episodes per seed; "
            f"seeds {args.seeds}):\n\n{table(result)}"
        )
    print(f"\nwall time {record['wall_time_s']} s, commit {record['commit']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
