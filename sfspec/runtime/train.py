"""``sfspec train``: the runner. It owns the run directory, the loop, logging, checkpoints, signals and resume.

What one iteration does (collect experience, update the model) belongs to the algorithm the spec
names (``train.algorithm``, PPO by default: sfspec/runtime/ppo.py); the runner only drives it.

Under torchrun (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set) the runner also joins the process group
(sfspec/runtime/distributed.py), gives each rank its device (``cuda:LOCAL_RANK``) and its seeds,
broadcasts rank 0's weights, and lets rank 0 alone touch the run directory: it locks it, writes the
metrics, TensorBoard events, progress bar and checkpoints (with every rank's RNG, environment
snapshot and carry-over), and hands the checkpoint it resumes from to the other ranks. Every stop
(budget, Ctrl-C, ``on_log``) is agreed at an update boundary, so all ranks save and stop together.
"""

from __future__ import annotations

import json
import math
import random
import signal
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
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
from sfspec.runtime.checkpoint import (
    CHECKPOINT_NAME,
    CheckpointError,
    parse_checkpoint,
    save_checkpoint,
)
from sfspec.runtime.config import RunnerConfig, with_derived_defaults
from sfspec.runtime.distributed import (
    Launch,
    NoComm,
    from_bytes,
    open_communicator,
    rank_device,
    record_failure,
    to_bytes,
    torchrun_launch,
)
from sfspec.runtime.errors import TrainingError
from sfspec.runtime.logger import NullLogger, RunLogger
from sfspec.runtime.rundir import (
    RunDirError,
    find_launched_run,
    locked_run_dir,
    mark_launch,
    refuse_existing_run,
    truncate_metrics,
)
from sfspec.runtime.threads import apply_to_model
from sfspec.runtime.vec_env import EnvStepError, make_env
from sfspec.spec.config import EnvConfig
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

    Under torchrun (``patient``) the process is one rank of a job, and a signal only ever asks:
    torchrun forwards the terminal's Ctrl-C (or the scheduler's SIGTERM) to every rank, and all must
    reach the boundary to save together; torchrun's SIGKILL ends a rank that cannot. A patient
    handler is installed for the whole run, set-up and process group included, and stays after it:
    a signal that comes late (to a rank that already stopped with the others, or that is reporting
    why it failed while torchrun stops the job) must not kill it before it says so, and the process
    is on its way out anyway.
    """

    def __init__(self, patient: bool = False) -> None:
        self.requested = False
        self.patient = patient
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, self._request)
        return self

    def _request(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT and not self.patient:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self.patient:
            return
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
    Started by torchrun, this process is one rank of a data-parallel run (see the module's docstring).
    """
    spec = with_derived_defaults(spec)  # the rule's train: values, written into spec.yaml and the checkpoint
    cfg = RunnerConfig.from_spec(spec)
    launch = torchrun_launch()
    device = rank_device(resolve_device(device_name or cfg.device), launch)
    stop = _StopSignals(patient=True) if launch is not None and launch.world_size > 1 else None
    with stop or nullcontext(), open_communicator(launch, device) as comm:
        try:
            with ExitStack() as stack:
                opened = _open_run(stack, spec, run_dir, resume, spec_path, device, launch, comm)
                run_dir, checkpoint = opened
                seed_everything(cfg.seed)
                env_seed = cfg.seed + comm.rank * EnvConfig.from_spec(spec["env"]).num_envs
                env = make_env(spec["env"], env_seed, device, InterfaceConfig.from_spec(spec))
                stack.callback(env.close)
                runner = Runner(spec, cfg, env, device, run_dir, smap, checkpoint, plan, comm, env_seed)
                logger = NullLogger()
                if comm.rank == 0:
                    logger = RunLogger(run_dir, runner.total_steps, runner.step, quiet, spec_name)
                return runner.run(logger, on_log, stop)
        except Exception as exc:
            if not comm.active:
                raise
            failure = _rank_failure(exc, comm.rank)
            record_failure(failure)
            raise failure from exc


def _rank_failure(exc: Exception, rank: int) -> Exception:
    """The error of one rank, naming it; a broken process group means another rank stopped first."""
    import torch.distributed as dist

    if isinstance(exc, (TrainingError, EnvStepError, CheckpointError, RunDirError)):
        message = str(exc)
        return exc if message.startswith("rank ") else type(exc)(f"rank {rank}: {message}")
    if isinstance(exc, dist.DistError) or "gloo" in str(exc).lower() or "nccl" in str(exc).lower():
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return TrainingError(
            f"rank {rank}: another rank stopped, so this one stops too (the process group broke: {first}); "
            "the last checkpoint is kept"
        )
    return exc


def _open_run(
    stack: ExitStack, spec: dict, run_dir: Path, resume: bool, spec_path, device, launch: Launch | None, comm: NoComm
) -> tuple[Path, dict | None]:
    """Rank 0 locks and opens the run directory; every rank gets its path and the checkpoint to continue from."""
    if not comm.active:
        if launch is not None and launch.restart_count > 0 and not resume:
            run_dir, resume = _restarted_run(run_dir, launch, resume)
        stack.enter_context(locked_run_dir(run_dir))
        if launch is not None and launch.run_id:
            mark_launch(run_dir, launch.run_id)
        checkpoint, _ = _open_run_dir(run_dir, spec, resume, spec_path, device)
        return run_dir, checkpoint
    header, data = {"error": None}, None
    if comm.rank == 0:
        try:
            if launch.restart_count > 0 and not resume:
                run_dir, resume = _restarted_run(run_dir, launch, resume)
            stack.enter_context(locked_run_dir(run_dir))
            if launch.run_id:
                mark_launch(run_dir, launch.run_id)
            _, data = _open_run_dir(run_dir, spec, resume, spec_path, device)
        except Exception as exc:
            comm.broadcast_bytes(json.dumps({"error": str(exc)}).encode())
            raise
        header = {"error": None, "run_dir": str(run_dir)}
    header = json.loads(comm.broadcast_bytes(json.dumps(header).encode() if comm.rank == 0 else None))
    if header["error"] is not None:
        raise TrainingError(f"rank {comm.rank}: stopped: rank 0 could not open the run: {header['error']}")
    data = comm.broadcast_bytes(data)
    checkpoint = parse_checkpoint(data, Path(header["run_dir"]) / CHECKPOINT_NAME, device) if data else None
    if checkpoint is not None and checkpoint.get("threads") and checkpoint["threads"] != torch.get_num_threads():
        torch.set_num_threads(checkpoint["threads"])
    return Path(header["run_dir"]), checkpoint


def _restarted_run(run_dir: Path, launch: Launch, resume: bool) -> tuple[Path, bool]:
    """After a torchrun restart: the directory this job's first attempt wrote, continued (or ``run_dir``, fresh)."""
    found = find_launched_run(run_dir, launch.run_id)
    return (found, True) if found is not None else (run_dir, resume)


def _open_run_dir(run_dir: Path, spec: dict, resume: bool, spec_path: str | None, device) -> tuple[dict | None, bytes]:
    """The checkpoint to continue from (None for a fresh run) and its file's bytes; metrics cut back, spec written."""
    checkpoint, data = None, b""
    path = run_dir / CHECKPOINT_NAME
    if resume and path.exists():
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot read checkpoint: {exc.strerror or exc}") from None
        checkpoint = parse_checkpoint(data, path, device)
    elif not resume:
        refuse_existing_run(run_dir, spec_path)
    truncate_metrics(run_dir, checkpoint["global_step"] if checkpoint is not None else 0)
    if checkpoint is None:
        atomic_write_text(run_dir / "spec.yaml", yaml.safe_dump(spec, sort_keys=False))
    elif checkpoint.get("threads") and checkpoint["threads"] != torch.get_num_threads():
        torch.set_num_threads(checkpoint["threads"])  # results are exact only at the run's thread count
    return checkpoint, data


# What the runner itself stores in a checkpoint; an algorithm's state_dict() keys sit beside these.
RUNNER_KEYS = frozenset(
    {
        "spec",
        "model",
        "update",
        "global_step",
        "elapsed",
        "rng",
        "env",
        "finished",
        "threads",
        "format",
        "world_size",
        "ranks",
    }
)
RANK_KEYS = ("rng", "env")  # what the runner keeps per rank, beside the algorithm's local_keys


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s own random streams (sampling, minibatch order); rank 0 keeps ``seed``."""
    return seed + 1_000_003 * rank


def rank_state(checkpoint: dict, comm: NoComm, local_keys: tuple[str, ...]) -> tuple[dict, bool]:
    """What this rank resumes from, and whether it is its own (same world size: exact) or only the shared part.

    A checkpoint of another world size restores what all ranks share (weights, optimiser, normalisers);
    each rank's RNG, environments and carry-over then start fresh.
    """
    saved_world = checkpoint.get("world_size", 1)
    if saved_world == comm.world_size:
        ranks = checkpoint.get("ranks")
        return ({**checkpoint, **ranks[comm.rank]} if ranks else checkpoint), True
    return {k: v for k, v in checkpoint.items() if k not in (*RANK_KEYS, *local_keys)}, False


class Runner:
    """Drives an algorithm over its budget: logs, checkpoints, stops cleanly; the algorithm does the learning."""

    def __init__(
        self,
        spec: dict,
        cfg: RunnerConfig,
        env,
        device,
        run_dir: Path,
        smap,
        checkpoint,
        plan=None,
        comm: NoComm | None = None,
        env_seed: int | None = None,
    ):
        self.spec, self.cfg, self.env, self.run_dir = spec, cfg, env, run_dir
        self.comm = comm = comm if comm is not None else NoComm()
        env_seed = cfg.seed if env_seed is None else env_seed
        if plan is not None:  # planned by pipeline.check for these spaces: build only
            self.model = build_from_plan(plan, smap).to(device)
        else:
            self.model = build_for_spec(spec, env, device, smap)
        if checkpoint is None or not checkpoint.get("threads"):  # a resume keeps its run's count (_open_run)
            apply_to_model(cfg.threads, self.model, env.num_envs, device)
        self.algorithm: Algorithm = make_algorithm(self.model, env, spec.get("train", {}), device, comm)
        self.local_keys = tuple(getattr(self.algorithm, "local_keys", ()))
        self.total, self.batch = self.algorithm.total_iterations, self.algorithm.steps_per_iteration
        self.update, self.elapsed, self.base = 0, 0.0, (0, 0)
        if comm.rank:  # every rank built the same initial weights (broadcast below); now its own streams
            seed_everything(rank_seed(cfg.seed, comm.rank))
        obs, exact, state = env.reset(seed=env_seed), False, None
        if checkpoint is not None:
            state, same_world = rank_state(checkpoint, comm, self.local_keys)
            self.model.load_state_dict(checkpoint["model"])
            self.update, self.elapsed = checkpoint["update"], checkpoint["elapsed"]
            if not same_world:  # another batch per update: count steps on from the checkpoint's
                self._rebase(checkpoint["global_step"])
            if "rng" in state:
                _set_rng_state(state["rng"])
            else:
                seed_everything(rank_seed(cfg.seed, comm.rank) + self.update)
            exact = env.on_device and state.get("env") is not None
            if exact:  # a tensor env continues exactly where it stopped
                env.restore(state["env"])
            else:  # gymnasium envs cannot be snapshotted: new episodes, new seeds
                obs = env.reset(seed=env_seed + 1_000_003 * self.update)
        comm.broadcast_module_(self.model)  # rank 0's weights (and normalisers) on every rank
        if cfg.compile:
            self.model.compile()  # torch.compile of the network's forward; the first updates pay the compilation
        self.algorithm.start(obs)
        if checkpoint is not None:
            self.algorithm.load_state_dict(state, exact)

    def _rebase(self, global_step: int) -> None:
        """Resume at ``global_step`` with this run's batch per update; the budget stays ``train.steps``."""
        self.base = (self.update, global_step)
        self.total = self.update + math.ceil(max(0, self.cfg.steps - global_step) / self.batch)

    @property
    def step(self) -> int:
        """Environment steps taken so far (all ranks together)."""
        return self.base[1] + (self.update - self.base[0]) * self.batch

    @property
    def total_steps(self) -> int:
        """Environment steps when the budget is spent."""
        return self.base[1] + (self.total - self.base[0]) * self.batch

    def run(
        self,
        logger: RunLogger,
        on_log: Callable[[dict, ActorCritic], bool] | None = None,
        stop: _StopSignals | None = None,
    ) -> TrainResult:
        """Iterate until the budget is spent, the user stops the run, or ``on_log`` says so.

        ``stop``: the stop signals, when the caller installed them already (data-parallel: for the whole run).
        """
        self.started = time.perf_counter()  # the run's clock: set-up and the logger's start are not training
        self.logger, self.interval = logger, (self.started, self.step)
        interrupted = False
        try:
            with nullcontext(stop) if stop is not None else _StopSignals(patient=self.comm.active) as stop:
                while self.update < self.total:
                    try:
                        stats = self.algorithm.iteration(self.env, self.update)
                    except EnvStepError as exc:
                        raise TrainingError(f"{exc} (at step {self.step})") from exc
                    self.update += 1
                    stopping = self.comm.any(stop.requested)  # every rank stops at the same update
                    if self.update % self.cfg.log_interval == 0 or self.update == self.total:
                        if self._log(stats, on_log):
                            self.save(finished=True)
                            break
                    if self.update % self.cfg.checkpoint_interval == 0 or self.update == self.total:
                        self.save(finished=self.update == self.total)
                    elif stopping:
                        self.save()
                    if stopping and self.update < self.total:
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
        stop = bool(on_log(metrics, self.model)) if self.comm.rank == 0 else False
        stop = self.comm.any(stop)  # rank 0 decides for all
        paused = time.perf_counter() - paused
        self.started += paused
        self.interval = (self.interval[0] + paused, self.step)
        return stop

    def save(self, finished: bool = False) -> None:
        """An atomic checkpoint of everything needed to continue exactly from this update (rank 0 writes it).

        Data-parallel, every rank sends rank 0 what is its own (RNG, environment snapshot, the
        algorithm's ``local_keys``); rank 0's copy of those also sits at the top level.
        """
        algorithm_state = self.algorithm.state_dict()
        clash = set(algorithm_state) & RUNNER_KEYS
        if clash:  # an algorithm's state sits beside the runner's; it must never replace the weights or spec
            raise TypeError(f"{type(self.algorithm).__name__}.state_dict() uses the runner's keys {sorted(clash)}")
        own = {
            "rng": _rng_state(),
            "env": self.env.snapshot() if self.env.on_device else None,
            **{k: algorithm_state[k] for k in self.local_keys if k in algorithm_state},
        }
        extra = {}
        if self.comm.active:
            parts = self.comm.gather_bytes(to_bytes(own))
            if parts is None:  # not rank 0: rank 0 writes
                return
            extra = {"world_size": self.comm.world_size, "ranks": [from_bytes(part) for part in parts]}
        save_checkpoint(
            self.run_dir / CHECKPOINT_NAME,
            {
                "spec": self.spec,
                "model": self.model.state_dict(),
                **algorithm_state,
                **own,
                "update": self.update,
                "global_step": self.step,
                "elapsed": self.elapsed + time.perf_counter() - self.started,
                "finished": finished,
                "threads": torch.get_num_threads(),
                **extra,
            },
        )
