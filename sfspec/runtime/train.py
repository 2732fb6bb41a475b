"""``sfspec train``: the runner. It owns the run directory, the loop, logging, checkpoints, signals and resume.

What one iteration does (collect experience, update the model) belongs to the algorithm the spec
names (``train.algorithm``, PPO by default: sfspec/runtime/ppo.py); the runner only drives it.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from sfspec.compiler.build import build_from_plan, compile_model
from sfspec.compiler.interface_config import InterfaceConfig
from sfspec.compiler.model import ActorCritic
from sfspec.compiler.plan import ModelPlan
from sfspec.io import atomic_write_text
from sfspec.runtime.algorithm import Algorithm, make_algorithm
from sfspec.runtime.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from sfspec.runtime.config import RunnerConfig
from sfspec.runtime.errors import TrainingError
from sfspec.runtime.logger import RunLogger
from sfspec.runtime.rundir import locked_run_dir, refuse_existing_run, truncate_metrics
from sfspec.runtime.vec_env import EnvStepError, make_env
from sfspec.spec.loader import SourceMap

__all__ = ["TrainResult", "TrainingError", "build_for_spec", "default_run_dir", "resolve_device", "train"]


@dataclass
class TrainResult:
    """Where a run ended."""

    run_dir: Path
    global_step: int
    updates: int
    interrupted: bool


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"device '{name}' was asked for, but CUDA is not available here")
    return device


def seed_everything(seed: int) -> None:
    """Seed every random source the runtime uses."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_run_dir(spec_path: str) -> Path:
    """runs/<spec name>-<date>-<time>, with -2, -3, ... when runs started within the same second."""
    base = Path("runs") / f"{Path(spec_path).stem}-{datetime.now():%Y%m%d-%H%M%S}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def build_for_spec(spec: dict, env, device: torch.device, smap: SourceMap | None = None) -> ActorCritic:
    """The model a spec describes, for this env's spaces, on ``device``."""
    model = compile_model(spec, env.observation_space, env.action_space, smap, spec["env"]["id"])
    return model.to(device)


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _StopSignals:
    """Ctrl-C and SIGTERM ask the loop to stop at the next update boundary, where a checkpoint is exact.

    A second Ctrl-C stops at once (the last checkpoint is kept). Outside the main thread signals
    cannot be caught, so there the default behaviour stays.
    """

    def __init__(self) -> None:
        self.requested = False
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, self._request)
        return self

    def _request(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def train(
    spec: dict,
    run_dir: Path,
    device_name: str | None = None,
    quiet: bool = False,
    resume: bool = False,
    smap: SourceMap | None = None,
    spec_name: str = "spec",
    on_log: Callable[[dict, ActorCritic], bool] | None = None,
    spec_path: str | None = None,
    plan: ModelPlan | None = None,
) -> TrainResult:
    """Train the spec's model in ``run_dir`` (continuing its checkpoint if ``resume``).

    The run directory is locked for the life of the run. A fresh run refuses a directory that
    already holds one (or ``spec_path`` itself); ``resume`` without a checkpoint starts the run over.
    ``on_log(metrics, model)`` runs at every log interval, outside the timed training; returning
    True ends the run there (benchmarks use it to stop once a policy is solved). ``plan``: the
    model plan ``pipeline.check`` made, so the model is built from it instead of planned again.
    """
    cfg = RunnerConfig.from_spec(spec)
    device = resolve_device(device_name or cfg.device)
    with locked_run_dir(run_dir):
        checkpoint = _open_run_dir(run_dir, spec, resume, spec_path, device)
        seed_everything(cfg.seed)
        env = make_env(spec["env"], cfg.seed, device, InterfaceConfig.from_spec(spec))
        try:
            runner = Runner(spec, cfg, env, device, run_dir, smap, checkpoint, plan)
            return runner.run(RunLogger(run_dir, runner.total * runner.batch, runner.step, quiet, spec_name), on_log)
        finally:
            env.close()


def _open_run_dir(run_dir: Path, spec: dict, resume: bool, spec_path: str | None, device) -> dict | None:
    """The checkpoint to continue from (None for a fresh run); metrics cut back to it, the spec written."""
    checkpoint = None
    if resume and (run_dir / CHECKPOINT_NAME).exists():
        checkpoint = load_checkpoint(run_dir, device)
    elif not resume:
        refuse_existing_run(run_dir, spec_path)
    truncate_metrics(run_dir, checkpoint["global_step"] if checkpoint is not None else 0)
    if checkpoint is None:
        atomic_write_text(run_dir / "spec.yaml", yaml.safe_dump(spec, sort_keys=False))
    elif checkpoint.get("threads") and checkpoint["threads"] != torch.get_num_threads():
        torch.set_num_threads(checkpoint["threads"])  # results are exact only at the run's thread count
    return checkpoint


# What the runner itself stores in a checkpoint; an algorithm's state_dict() keys sit beside these.
RUNNER_KEYS = frozenset(
    {"spec", "model", "update", "global_step", "elapsed", "rng", "env", "finished", "threads", "format"}
)


class Runner:
    """Drives an algorithm over its budget: logs, checkpoints, stops cleanly; the algorithm does the learning."""

    def __init__(self, spec: dict, cfg: RunnerConfig, env, device, run_dir: Path, smap, checkpoint, plan=None):
        self.spec, self.cfg, self.env, self.run_dir = spec, cfg, env, run_dir
        if plan is not None:  # planned by pipeline.check for these spaces: build only
            self.model = build_from_plan(plan, smap).to(device)
        else:
            self.model = build_for_spec(spec, env, device, smap)
        if cfg.compile:
            self.model.compile()  # torch.compile of the network's forward; the first updates pay the compilation
        self.algorithm: Algorithm = make_algorithm(self.model, env, spec.get("train", {}), device)
        self.total, self.batch = self.algorithm.total_iterations, self.algorithm.steps_per_iteration
        self.update, self.elapsed = 0, 0.0
        obs, exact = env.reset(seed=cfg.seed), False
        if checkpoint is not None:
            self.model.load_state_dict(checkpoint["model"])
            self.update, self.elapsed = checkpoint["update"], checkpoint["elapsed"]
            _set_rng_state(checkpoint["rng"])
            exact = env.on_device and checkpoint.get("env") is not None
            if exact:  # a tensor env continues exactly where it stopped
                env.restore(checkpoint["env"])
            else:  # gymnasium envs cannot be snapshotted: new episodes, new seeds
                obs = env.reset(seed=cfg.seed + 1_000_003 * self.update)
        self.algorithm.start(obs)
        if checkpoint is not None:
            self.algorithm.load_state_dict(checkpoint, exact)

    @property
    def step(self) -> int:
        """Environment steps taken so far."""
        return self.update * self.batch

    def run(self, logger: RunLogger, on_log: Callable[[dict, ActorCritic], bool] | None = None) -> TrainResult:
        """Iterate until the budget is spent, the user stops the run, or ``on_log`` says so."""
        self.started = time.perf_counter()  # the run's clock: set-up and the logger's start are not training
        self.logger, self.interval = logger, (self.started, self.step)
        interrupted = False
        try:
            with _StopSignals() as stop:
                while self.update < self.total:
                    try:
                        stats = self.algorithm.iteration(self.env, self.update)
                    except EnvStepError as exc:
                        raise TrainingError(f"{exc} (at step {self.step})") from exc
                    self.update += 1
                    if self.update % self.cfg.log_interval == 0 or self.update == self.total:
                        if self._log(stats, on_log):
                            self.save(finished=True)
                            break
                    if self.update % self.cfg.checkpoint_interval == 0 or self.update == self.total:
                        self.save(finished=self.update == self.total)
                    elif stop.requested:
                        self.save()
                    if stop.requested and self.update < self.total:
                        interrupted = True
                        break
        except KeyboardInterrupt:  # a second Ctrl-C: stop now, keeping the last checkpoint
            interrupted = True
        finally:
            self.logger.close()
        return TrainResult(self.run_dir, self.step, self.update, interrupted)

    def _log(self, stats: dict[str, torch.Tensor], on_log) -> bool:
        """Write one metrics line; True if ``on_log`` asks to stop. Time spent in ``on_log`` is not counted."""
        now = time.perf_counter()
        ret, length, episodes = self.algorithm.episode_stats()
        start, start_step = self.interval
        metrics = {
            "step": self.step,
            "update": self.update,
            "time": round(self.elapsed + now - self.started, 3),
            "sps": (self.step - start_step) / max(now - start, 1e-9),
            "return_mean": ret,
            "length_mean": length,
            "episodes": episodes,
            "lr": self.algorithm.learning_rate(),
            **{k: float(v) for k, v in stats.items()},
        }
        self.logger.log(metrics)
        self.interval = (now, self.step)
        if on_log is None:
            return False
        paused = time.perf_counter()
        stop = on_log(metrics, self.model)
        paused = time.perf_counter() - paused
        self.started += paused
        self.interval = (self.interval[0] + paused, self.step)
        return bool(stop)

    def save(self, finished: bool = False) -> None:
        """An atomic checkpoint of everything needed to continue exactly from this update."""
        algorithm_state = self.algorithm.state_dict()
        clash = set(algorithm_state) & RUNNER_KEYS
        if clash:  # an algorithm's state sits beside the runner's; it must never replace the weights or spec
            raise TypeError(f"{type(self.algorithm).__name__}.state_dict() uses the runner's keys {sorted(clash)}")
        save_checkpoint(
            self.run_dir / CHECKPOINT_NAME,
            {
                "spec": self.spec,
                "model": self.model.state_dict(),
                **algorithm_state,
                "update": self.update,
                "global_step": self.step,
                "elapsed": self.elapsed + time.perf_counter() - self.started,
                "rng": _rng_state(),
                "env": self.env.snapshot() if self.env.on_device else None,
                "finished": finished,
                "threads": torch.get_num_threads(),
            },
        )
