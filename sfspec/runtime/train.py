"""``sfspec train``: a run directory, the PPO loop, checkpoints, and clean stops on faults."""

from __future__ import annotations

import math
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

from sfspec.compiler.build import compile_model
from sfspec.compiler.model import ActorCritic
from sfspec.io import atomic_write_text
from sfspec.runtime.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from sfspec.runtime.config import TrainConfig
from sfspec.runtime.logger import RunLogger
from sfspec.runtime.ppo import Carry, ReturnNormalizer, Rollout, collect_rollout, num_updates, ppo_update, scheduled_lr
from sfspec.runtime.rundir import locked_run_dir, refuse_existing_run, truncate_metrics
from sfspec.runtime.vec_env import EnvStepError, make_env
from sfspec.spec.loader import SourceMap


class TrainingError(Exception):
    """Training stopped on a fault (an environment error, a non-finite loss); the last checkpoint is kept."""


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
    """runs/<spec name>-<date>-<time>."""
    return Path("runs") / f"{Path(spec_path).stem}-{datetime.now():%Y%m%d-%H%M%S}"


def build_for_spec(spec: dict, env, device: torch.device, smap: SourceMap | None = None) -> ActorCritic:
    """The model a spec describes, for this env's spaces, on ``device``."""
    model = compile_model(spec, env.observation_space, env.action_space, smap, spec["env"]["id"])
    return model.to(device)


def make_optimizer(model: ActorCritic, lr: float) -> torch.optim.Optimizer:
    """Adam with its fused kernel (one call for all parameters, CPU and CUDA alike)."""
    return torch.optim.Adam(model.parameters(), lr=lr, eps=1e-5, fused=True)


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
) -> TrainResult:
    """Train the spec's model with PPO in ``run_dir`` (continuing its checkpoint if ``resume``).

    The run directory is locked for the life of the run. A fresh run refuses a directory that
    already holds one (or ``spec_path`` itself); ``resume`` without a checkpoint starts the run over.
    ``on_log(metrics, model)`` runs at every log interval, outside the timed training; returning
    True ends the run there (benchmarks use it to stop once a policy is solved).
    """
    cfg = TrainConfig.from_spec(spec)
    device = resolve_device(device_name or cfg.device)
    with locked_run_dir(run_dir):
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
        seed_everything(cfg.seed)
        env = make_env(spec["env"], cfg.seed, device)
        try:
            return _run(spec, cfg, env, device, run_dir, quiet, checkpoint, smap, spec_name, on_log)
        finally:
            env.close()


def _run(
    spec, cfg: TrainConfig, env, device, run_dir: Path, quiet: bool, checkpoint, smap, spec_name, on_log
) -> TrainResult:
    model = build_for_spec(spec, env, device, smap)
    if cfg.compile:
        model.compile()  # torch.compile of the network's forward; the first updates pay the compilation
    optimizer = make_optimizer(model, cfg.lr)
    return_norm = ReturnNormalizer().to(device) if cfg.normalize_returns else None
    if cfg.bptt is not None and model.state_size and cfg.rollout % cfg.bptt:
        raise TrainingError(f"train.bptt ({cfg.bptt}) must divide train.rollout ({cfg.rollout})")
    total_updates = num_updates(cfg, env.num_envs)
    batch_steps = cfg.rollout * env.num_envs

    update, elapsed = 0, 0.0
    obs = env.reset(seed=cfg.seed)
    carry = Carry.start(obs, model, env.num_envs, device)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if return_norm is not None and checkpoint.get("return_norm") is not None:
            return_norm.load_state_dict(checkpoint["return_norm"])
        update, elapsed = checkpoint["update"], checkpoint["elapsed"]
        _set_rng_state(checkpoint["rng"])
        carry = _restore_carry(checkpoint, env, model, device, cfg, update)

    rollout = Rollout.allocate(
        cfg.rollout,
        carry.obs,
        model.layout.size,
        model.state_size,
        device,
        batched_bootstrap=env.on_device,
        masked=getattr(env, "next_step_reset", False),
    )
    logger = RunLogger(run_dir, total_updates * batch_steps, update * batch_steps, quiet, spec_name)
    started = time.perf_counter()

    def save(finished: bool = False) -> None:
        save_checkpoint(
            run_dir / CHECKPOINT_NAME,
            {
                "spec": spec,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "return_norm": return_norm.state_dict() if return_norm is not None else None,
                "update": update,
                "global_step": update * batch_steps,
                "elapsed": elapsed + time.perf_counter() - started,
                "rng": _rng_state(),
                "carry": _carry_state(carry),
                "env": env.snapshot() if env.on_device else None,
                "finished": finished,
                "threads": torch.get_num_threads(),
            },
        )

    interval_start, interval_step = started, update * batch_steps
    interrupted = False
    try:
        with _StopSignals() as stop:
            while update < total_updates:
                lr = scheduled_lr(cfg, update, total_updates)
                if lr is not None:
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                try:
                    collect_rollout(model, env, carry, rollout, cfg, return_norm)
                except EnvStepError as exc:
                    raise TrainingError(f"{exc} (at step {update * batch_steps})") from exc
                finite = finite_flags(rollout)  # read back with the loss: no extra host synchronisation
                with torch.no_grad():
                    next_value = model.values(carry.obs, carry.state * (1.0 - carry.done).unsqueeze(-1))
                stats = ppo_update(model, optimizer, rollout, next_value, cfg)
                _check_finite(stats["loss"], finite, rollout, spec["env"]["id"], update, batch_steps)
                model.preprocessor.update({k: v.flatten(0, 1) for k, v in rollout.obs.items()})
                update += 1
                if update % cfg.log_interval == 0 or update == total_updates:
                    now = time.perf_counter()
                    ret, length, episodes = carry.take_episode_stats()
                    step = update * batch_steps
                    metrics = {
                        "step": step,
                        "update": update,
                        "time": round(elapsed + now - started, 3),
                        "sps": (step - interval_step) / max(now - interval_start, 1e-9),
                        "return_mean": ret,
                        "length_mean": length,
                        "episodes": episodes,
                        "lr": optimizer.param_groups[0]["lr"],
                        **{k: float(v) for k, v in stats.items()},
                    }
                    logger.log(metrics)
                    interval_start, interval_step = now, step
                    if on_log is not None:
                        paused = time.perf_counter()
                        stop_here = on_log(metrics, model)
                        paused = time.perf_counter() - paused
                        started, interval_start = started + paused, interval_start + paused
                        if stop_here:
                            save(finished=True)
                            break
                if update % cfg.checkpoint_interval == 0 or update == total_updates:
                    save(finished=update == total_updates)
                elif stop.requested:
                    save()
                if stop.requested and update < total_updates:
                    interrupted = True
                    break
    except KeyboardInterrupt:  # a second Ctrl-C: stop now, keeping the last checkpoint
        interrupted = True
    finally:
        logger.close()
    return TrainResult(run_dir, update * batch_steps, update, interrupted)


_KEPT = "training stopped, the last checkpoint is kept"


def finite_flags(rollout: Rollout) -> torch.Tensor:
    """One flag per float observation key, then the rewards: 1 where the rollout holds a non-finite value."""
    parts = [rollout.obs[k] for k in sorted(rollout.obs) if rollout.obs[k].is_floating_point()] + [rollout.rewards]
    return torch.stack([(~torch.isfinite(p)).any() for p in parts]).to(torch.float32)


def _check_finite(loss: torch.Tensor, flags: torch.Tensor, rollout: Rollout, env_id: str, update: int, steps: int):
    """Stop on non-finite data, naming its source: the environment's observations or rewards, else the loss."""
    values = torch.cat([loss.detach().float().reshape(1), flags.to(loss.device)]).tolist()
    keys = [k for k in sorted(rollout.obs) if rollout.obs[k].is_floating_point()]
    where = f"steps {update * steps}-{(update + 1) * steps}"
    for key, bad in zip(keys, values[1:]):
        if bad:
            raise TrainingError(f"{env_id} returned a non-finite observation '{key}' (in {where}); {_KEPT}")
    if values[-1]:
        raise TrainingError(f"{env_id} returned a non-finite reward (in {where}); {_KEPT}")
    if not math.isfinite(values[0]):
        raise TrainingError(
            f"the loss became {values[0]} at step {(update + 1) * steps} "
            f"of {env_id}; try a lower train.lr or train.max_grad_norm"
        )


def _carry_state(carry: Carry) -> dict[str, Any]:
    return {
        "obs": carry.obs,
        "state": carry.state,
        "done": carry.done,
        "episode_return": carry.episode_return,
        "episode_length": carry.episode_length,
        "discounted_return": carry.discounted_return,
        # Episodes finished since the last log line, so an interval that spans a resume counts them.
        "finished": torch.stack([carry.finished_return, carry.finished_length, carry.finished_count]),
    }


def _restore_carry(checkpoint: dict, env, model: ActorCritic, device, cfg: TrainConfig, update: int) -> Carry:
    """Continue exactly where a tensor env stopped; gymnasium envs start fresh episodes."""
    saved = checkpoint["carry"]
    if env.on_device and checkpoint.get("env") is not None:
        env.restore(checkpoint["env"])
        carry = Carry.start(saved["obs"], model, env.num_envs, device)
        for key in ("state", "done", "episode_return", "episode_length", "discounted_return"):
            setattr(carry, key, saved[key].to(device))
        carry.obs = {k: v.to(device) for k, v in saved["obs"].items()}
    else:
        obs = env.reset(seed=cfg.seed + 1_000_003 * update)  # new episodes, new seeds
        carry = Carry.start(obs, model, env.num_envs, device)
    if "finished" in saved:
        carry.finished_return, carry.finished_length, carry.finished_count = saved["finished"].to(device).unbind()
    return carry
