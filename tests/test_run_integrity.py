"""Runs that cannot run code, lose data, or lie: each test builds its own attack or fault."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import write_yaml
from gymnasium import spaces

from sfspec.envs import TensorEnv, register_tensor_env
from sfspec.runtime import logger as logger_module
from sfspec.runtime.checkpoint import load_checkpoint, save_checkpoint
from sfspec.runtime.ppo import check_finite
from sfspec.runtime.rundir import locked_run_dir, parse_metrics
from sfspec.runtime.train import TrainingError, train

TESTS = Path(__file__).resolve().parent

TINY = {
    "env": {"id": "sfspec/CartPole-v1", "num_envs": 8},
    "model": {"encoder": [{"linear": 16}, "tanh"]},
    "train": {"steps": 8 * 8 * 6, "rollout": 8, "seed": 3, "log_interval": 1, "checkpoint_interval": 3},
}
BATCH = 8 * 8  # num_envs * rollout
pytestmark = pytest.mark.usefixtures("keep_thread_count")  # resumes adopt their run's thread count


def with_train(**changes) -> dict:
    return {**TINY, "train": {**TINY["train"], **changes}}


def metric_steps(run: Path) -> list[int]:
    return [row["step"] for row in parse_metrics((run / "metrics.jsonl").read_text())]


def same_weights(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- code execution through stored specs


EVIL_SPEC = {"env": {"id": "evilmod_sfspec:CartPole-v1", "num_envs": 2}, "model": {}}


@pytest.fixture
def evil_module(tmp_path, monkeypatch):
    """A module that leaves a marker file when imported; returns the marker's path."""
    marker = tmp_path / "pwned"
    (tmp_path / "evilmod_sfspec.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return marker


def test_stored_env_id_that_names_a_module_is_refused_by_eval_resume_and_export(cli, tmp_path, evil_module):
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(run / "checkpoint.pt", {"spec": EVIL_SPEC, "model": {}, "global_step": 0, "finished": False})
    for args in (("eval", str(run)), ("train", "--resume", str(run)), ("export", str(run))):
        result = cli(*args)
        assert result.code == 2, (args, result.err)
        assert "names the Python module 'evilmod_sfspec'" in result.err and "Traceback" not in result.err
    assert not evil_module.exists()


def test_bundle_spec_that_names_a_module_is_refused_by_eval(cli, tmp_path, evil_module):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "policy.json").write_text(json.dumps({"spec": EVIL_SPEC, "files": {"onnx": "policy.onnx"}}))
    result = cli("eval", str(bundle))
    assert result.code == 2 and "names the Python module 'evilmod_sfspec'" in result.err
    assert not evil_module.exists()


# ---------------------------------------------------------------- the run directory


def test_a_second_training_on_a_run_dir_in_use_is_refused(cli, tmp_path):
    run = tmp_path / "run"
    with locked_run_dir(run):  # as another sfspec process holds it
        result = cli("train", write_yaml(tmp_path, TINY), "--run-dir", str(run), "--quiet")
    assert result.code == 2 and "is in use by another sfspec process" in result.err
    assert not (run / "metrics.jsonl").exists() and not (run / "spec.yaml").exists()


def test_a_run_dir_with_metrics_but_no_checkpoint_is_not_appended_to(cli, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 64}\n')
    result = cli("train", write_yaml(tmp_path, TINY), "--run-dir", str(run), "--quiet")
    assert result.code == 2 and "already holds a run (metrics.jsonl)" in result.err
    assert (run / "metrics.jsonl").read_text() == '{"step": 64}\n'


def test_run_dir_dot_never_overwrites_the_users_own_spec(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = "# my notes\n" + yaml.safe_dump(TINY)
    Path("spec.yaml").write_text(text)
    result = cli("train", "spec.yaml", "--run-dir", ".", "--quiet")
    assert result.code == 2 and "would overwrite yours" in result.err
    assert Path("spec.yaml").read_text() == text


def test_a_read_only_run_dir_gets_a_message(cli, tmp_path):
    result = cli("train", write_yaml(tmp_path, TINY), "--run-dir", "/proc/sfspec-run", "--quiet")
    assert result.code == 2 and "cannot use /proc/sfspec-run as a run directory" in result.err
    assert "Traceback" not in result.err


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_it_over(cli, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "spec.yaml").write_text(yaml.safe_dump(TINY))
    (run / "metrics.jsonl").write_text('{"step": 64, "update": 1}\n{"step": 128, "upd')  # and a torn line
    result = cli("train", "--resume", str(run), "--quiet")
    assert result.code == 0, result.err
    assert "stopped before its first checkpoint; starting it again from step 0" in result.err
    assert metric_steps(run) == [BATCH * i for i in range(1, 7)]


def test_resume_after_a_crash_logs_every_step_once(cli, tmp_path):
    run = tmp_path / "run"

    def crash_at_update_5(metrics, model):
        if metrics["update"] == 5:
            raise RuntimeError("power cut")
        return False

    with pytest.raises(RuntimeError, match="power cut"):
        train(TINY, run, quiet=True, on_log=crash_at_update_5)
    assert load_checkpoint(run)["update"] == 3 and metric_steps(run)[-1] == 5 * BATCH
    assert cli("train", "--resume", str(run), "--quiet").code == 0
    assert metric_steps(run) == [BATCH * i for i in range(1, 7)]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("update")] == [BATCH * i for i in range(1, 7)]


def test_resuming_a_finished_run_says_so_and_how_to_extend_it(cli, tmp_path):
    run = tmp_path / "run"
    first = cli("train", write_yaml(tmp_path, TINY), "--run-dir", str(run), "--quiet")
    assert first.code == 0
    assert f"next: sfspec eval {run}  |  sfspec plot {run}  |  sfspec export {run}" in first.out
    before = (run / "metrics.jsonl").read_text()
    again = cli("train", "--resume", str(run))
    assert again.code == 0
    assert "already finished at step 384 (train.steps: 384)" in again.out
    assert f"sfspec train --resume {run} --set train.steps=768" in again.out
    assert (run / "metrics.jsonl").read_text() == before


def test_resume_refuses_overrides_that_change_what_the_run_was_trained_as(cli, tmp_path):
    run = tmp_path / "run"
    assert cli("train", write_yaml(tmp_path, with_train(steps=BATCH * 3)), "--run-dir", str(run), "--quiet").code == 0
    for override, path in (("train.rollout=4", "train.rollout"), ("env.num_envs=4", "env.num_envs")):
        result = cli("train", "--resume", str(run), "--set", override, "--quiet")
        assert result.code == 2, result.err
        assert f"--set {override}: {path}: cannot change {path} when resuming" in result.err
    result = cli("train", "--resume", str(run), "--set", "model.encoder[0].linear=32", "--quiet")
    assert result.code == 2 and "cannot change model.encoder[0].linear when resuming" in result.err
    assert metric_steps(run) == [BATCH, 2 * BATCH, 3 * BATCH]


def test_eval_overrides_that_change_the_model_get_a_message(cli, tmp_path):
    run = tmp_path / "run"
    assert cli("train", write_yaml(tmp_path, with_train(steps=BATCH)), "--run-dir", str(run), "--quiet").code == 0
    result = cli("eval", str(run), "--set", "model.encoder[0].linear=32")
    assert result.code == 2 and "the overrides change the model the run was trained with" in result.err
    assert "Traceback" not in result.err


def test_eval_takes_several_runs(cli, tmp_path):
    runs = [tmp_path / "a", tmp_path / "b"]
    for run in runs:
        assert cli("train", write_yaml(tmp_path, with_train(steps=BATCH)), "--run-dir", str(run), "--quiet").code == 0
    result = cli("eval", *map(str, runs), "--episodes", "2")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert [line.split(":")[0] for line in lines] == [str(r) for r in runs] and "2 episodes" in lines[0]


# ---------------------------------------------------------------- integrity of what was saved


def test_a_bit_flip_in_a_checkpoint_is_caught(cli, tmp_path):
    run = tmp_path / "run"
    assert cli("train", write_yaml(tmp_path, with_train(steps=BATCH)), "--run-dir", str(run), "--quiet").code == 0
    raw = bytearray((run / "checkpoint.pt").read_bytes())
    payload = torch.load(run / "checkpoint.pt", weights_only=True)["payload"].numpy().tobytes()
    at = raw.index(payload[len(payload) // 2 : len(payload) // 2 + 64]) + 10
    raw[at] ^= 0x10
    (run / "checkpoint.pt").write_bytes(bytes(raw))
    for args in (("eval", str(run)), ("train", "--resume", str(run), "--set", "train.steps=640")):
        result = cli(*args)
        assert result.code == 1 and "the checkpoint is corrupt" in result.err, result.err


def test_plot_reads_metrics_with_a_torn_last_line(cli, tmp_path):
    run = tmp_path / "run"
    assert cli("train", write_yaml(tmp_path, with_train(steps=BATCH * 2)), "--run-dir", str(run), "--quiet").code == 0
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 192, "return_me')  # the disk filled up mid-line
    result = cli("plot", str(run), "--out", str(tmp_path / "curve.png"))
    assert result.code == 0, result.err
    assert (tmp_path / "curve.png").stat().st_size > 0


class _FullDisk:
    """A metrics file on a disk that fills up after the first line."""

    def __init__(self, real):
        self.real, self.lines = real, 0

    def write(self, text):
        self.lines += 1
        if self.lines > 1:
            raise OSError(28, "No space left on device")
        return self.real.write(text)

    def flush(self):
        self.real.flush()

    def close(self):
        self.real.close()


def test_a_full_disk_while_logging_stops_with_a_message(cli, tmp_path, monkeypatch):
    real_init = logger_module.RunLogger.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self.metrics_file = _FullDisk(self.metrics_file)

    monkeypatch.setattr(logger_module.RunLogger, "__init__", init)
    run = tmp_path / "run"
    result = cli("train", write_yaml(tmp_path, TINY), "--run-dir", str(run), "--quiet")
    assert result.code == 1 and "Traceback" not in result.err
    assert "cannot write metrics: No space left on device" in result.err and "metrics.jsonl" in result.err


def test_checkpoint_records_the_thread_count_and_resume_uses_it(cli, tmp_path):
    run = tmp_path / "run"
    torch.set_num_threads(1)
    assert cli("train", write_yaml(tmp_path, with_train(steps=BATCH * 3)), "--run-dir", str(run), "--quiet").code == 0
    assert load_checkpoint(run)["threads"] == 1
    torch.set_num_threads(2)
    assert cli("train", "--resume", str(run), "--set", f"train.steps={BATCH * 4}", "--quiet").code == 0
    assert torch.get_num_threads() == 1


# ---------------------------------------------------------------- faulty environments


class _Faulty(TensorEnv):
    """obs = [t]; a fault from step ``at`` on: 'nan_obs', 'raise', 'exit' or 'bad_shape'."""

    state_dim = 1
    default_max_episode_steps = 50
    fault = ""

    def __init__(self, num_envs, device="cpu", dtype=torch.float32, seed=None, max_episode_steps=None, at=20):
        self.single_observation_space = spaces.Box(-1e3, 1e3, (2,), np.float32)
        self.single_action_space = spaces.Discrete(2)
        self.at, self.calls = at, 0
        super().__init__(num_envs, device, dtype, seed, max_episode_steps)

    def _initial_state(self):
        return torch.zeros(self.num_envs, 1, dtype=self.dtype, device=self.device)

    def _dynamics(self, state, actions):
        self.calls += 1
        if self.calls >= self.at and self.fault == "raise":
            raise RuntimeError("solver diverged")
        if self.calls >= self.at and self.fault == "exit":
            sys.exit(3)
        reward = torch.ones(self.num_envs, dtype=self.dtype, device=self.device)
        return state + 1, reward, torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)

    def _observe(self, state):
        obs = torch.cat([state, -state], dim=1).to(torch.float32)
        if self.calls >= self.at and self.fault == "nan_obs":
            obs[0, 1] = float("nan")
        if self.calls >= self.at and self.fault == "bad_shape":
            obs = obs[:, :1]
        return obs


for _fault in ("nan_obs", "raise", "exit", "bad_shape"):
    register_tensor_env(f"sfspec/Faulty-{_fault}-v0", type(f"Faulty_{_fault}", (_Faulty,), {"fault": _fault}))


@pytest.mark.parametrize(
    "fault, message",
    [
        ("nan_obs", "sfspec/Faulty-nan_obs-v0 returned a non-finite observation 'obs' (in steps 32-48)"),
        ("raise", "sfspec/Faulty-raise-v0: step raised RuntimeError: solver diverged (at step 32)"),
        ("exit", "sfspec/Faulty-exit-v0: step called sys.exit(3) (at step 32)"),
        ("bad_shape", "sfspec/Faulty-bad_shape-v0: step returned observation 'obs' of shape (2, 1), expected (2, 2)"),
    ],
)
def test_a_faulty_tensor_env_stops_training_with_a_message_naming_it(cli, tmp_path, fault, message):
    spec = {
        "env": {"id": f"sfspec/Faulty-{fault}-v0", "num_envs": 2},
        "model": {},
        "train": {"rollout": 8, "checkpoint_interval": 1, "steps": 1000},
    }
    run = tmp_path / "run"
    result = cli("train", write_yaml(tmp_path, spec), "--run-dir", str(run), "--quiet")
    assert result.code == 1, result.err
    assert message in result.err and "Traceback" not in result.err
    saved = load_checkpoint(run)
    assert saved["update"] == 2 and all(torch.isfinite(v).all() for v in saved["model"].values())


def test_a_non_finite_reward_is_named_as_such(cli, tmp_path):
    spec = {
        "env": {"id": "sfspec/Counter-v0", "num_envs": 2, "kwargs": {"nan_at": 20}},
        "model": {},
        "train": {"rollout": 8, "checkpoint_interval": 1, "steps": 1000},
    }
    result = cli("train", write_yaml(tmp_path, spec), "--run-dir", str(tmp_path / "run"), "--quiet")
    assert result.code == 1 and "sfspec/Counter-v0 returned a non-finite reward (in steps 32-48)" in result.err


def test_a_non_finite_loss_from_finite_data_blames_the_loss():
    from sfspec.runtime.ppo import Rollout

    rollout = Rollout.allocate(4, {"obs": torch.zeros(2, 3)}, 1, 0, "cpu")
    flags = torch.zeros(2)
    with pytest.raises(TrainingError, match=r"the loss became nan at step 16 of X-v0; try a lower train\.lr"):
        check_finite(torch.tensor(float("nan")), flags, rollout, "X-v0", 1, 8)


# ---------------------------------------------------------------- stops at an update boundary


def _wait_for(path: Path, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.slow
def test_ctrl_c_stops_at_an_update_boundary_and_resumes_exactly(cli, tmp_path):
    spec = with_train(steps=BATCH * 1_000_000, log_interval=1_000_000, checkpoint_interval=1)
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(TESTS))
    proc = subprocess.Popen(
        [sys.executable, "-m", "sfspec", "train", write_yaml(tmp_path, spec), "--run-dir", str(run), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    _wait_for(run / "checkpoint.pt")
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "checkpoint saved" in err and "Traceback" not in err
    stopped = load_checkpoint(run)
    total = stopped["update"] + 3
    resumed = cli("train", "--resume", str(run), "--set", f"train.steps={BATCH * total}", "--quiet")
    assert resumed.code == 0, resumed.err

    straight = tmp_path / "straight"
    torch.set_num_threads(stopped["threads"])  # the interrupted run's thread count, for exact equality
    same_spec = write_yaml(tmp_path, with_train(**{**spec["train"], "steps": BATCH * total}), "same.yaml")
    assert cli("train", same_spec, "--run-dir", str(straight), "--quiet").code == 0
    a, b = load_checkpoint(straight), load_checkpoint(run)
    assert a["update"] == b["update"] == total
    assert same_weights(a["model"], b["model"])
    # The one log line (at the end) counts the episodes of the whole run, across the stop.
    (row_a,) = parse_metrics((straight / "metrics.jsonl").read_text())
    (row_b,) = parse_metrics((run / "metrics.jsonl").read_text())
    assert row_a["episodes"] == row_b["episodes"] and row_a["return_mean"] == row_b["return_mean"]


def test_plot_names_a_damaged_metrics_line(cli, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 64, "return_mean": 1.0}\n{"step": 1\x00\n{"step": 192}\n')
    result = cli("plot", str(run), "--out", str(tmp_path / "curve.png"))
    assert result.code == 2 and "metrics.jsonl: line 2 is not JSON" in result.err and "Traceback" not in result.err


@pytest.mark.slow
def test_ctrl_c_in_a_terminal_stops_async_env_training_cleanly(tmp_path):
    """A terminal sends SIGINT to the whole process group, the environment workers included."""
    spec = {
        "env": {"id": "CartPole-v1", "num_envs": 2, "vectorization": "async"},
        "model": {},
        "train": {"rollout": 16, "steps": 10_000_000, "checkpoint_interval": 1},
    }
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sfspec", "train", write_yaml(tmp_path, spec), "--run-dir", str(run), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal gives it
    )
    _wait_for(run / "checkpoint.pt")
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "checkpoint saved" in err and "Traceback" not in err
    assert load_checkpoint(run)["update"] >= 1


class _LongArm(_Faulty):
    fault = ""


register_tensor_env("robots/Long-v0", _LongArm)


def test_a_plugin_tensor_env_outside_the_sfspec_namespace_validates_and_trains(cli, tmp_path):
    spec = {"env": {"id": "robots/Long-v0", "num_envs": 2}, "model": {}, "train": {"rollout": 8, "steps": 32}}
    path = write_yaml(tmp_path, spec)
    assert cli("validate", path).code == 0
    result = cli("train", path, "--run-dir", str(tmp_path / "run"), "--quiet")
    assert result.code == 0, result.err


def test_env_kwargs_that_make_an_enormous_space_are_a_spec_error(cli, write_spec):
    path = write_spec(
        """
        env: {id: sfspec/PixelGoal-v0, kwargs: {grid: 1000000, cell: 100}}
        model: {encoder: [flatten]}
        """
    )
    result = cli("validate", path)
    assert result.code == 2 and "does not fit in memory" in result.err and ":1:" in result.err


def test_export_takes_several_runs_each_into_its_own_bundle(cli, tmp_path):
    runs = [tmp_path / "a", tmp_path / "b"]
    for run in runs:
        assert cli("train", write_yaml(tmp_path, with_train(steps=BATCH)), "--run-dir", str(run), "--quiet").code == 0
    refused = cli("export", *map(str, runs), "--out", str(tmp_path / "one"), "--formats", "onnx")
    assert refused.code == 2 and f"2 sources were given ({runs[0]}, {runs[1]})" in refused.err
    result = cli("export", *map(str, runs), "--formats", "onnx")
    assert result.code == 0, result.err
    assert all((run / "bundle" / "policy.onnx").is_file() for run in runs)


def test_an_empty_export_formats_list_is_a_spec_error(cli, write_spec):
    path = write_spec(
        """
        env: {id: sfspec/CartPole-v1}
        model: {}
        export: {formats: []}
        """
    )
    result = cli("validate", path)
    assert result.code == 2 and "export.formats: needs at least 1 item(s)" in result.err


@pytest.mark.parametrize("damage", ['{"step": 1\x00\n', "[1, 2]\n", '{"step": "x"}\n'])
def test_resume_names_a_damaged_metrics_line_instead_of_crashing(cli, tmp_path, damage):
    run = tmp_path / "run"
    assert cli("train", write_yaml(tmp_path, with_train(steps=BATCH * 2)), "--run-dir", str(run), "--quiet").code == 0
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text(lines[0] + damage + lines[1])
    result = cli("train", "--resume", str(run), "--set", f"train.steps={BATCH * 3}", "--quiet")
    assert result.code == 2 and "Traceback" not in result.err
    assert "metrics.jsonl: line 2 is not" in result.err and "repair or remove that line" in result.err
    plot = cli("plot", str(run), "--out", str(tmp_path / "c.png"))
    assert plot.code == 2 and "line 2 is not" in plot.err


def test_a_full_disk_while_checkpointing_names_the_file_and_keeps_the_last_one(cli, tmp_path, monkeypatch):
    import sfspec.io

    real_fsync, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) == 5:  # spec.yaml (file, directory), checkpoint 1 (file, directory), then checkpoint 2
            raise OSError(28, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(sfspec.io.os, "fsync", fsync)
    run = tmp_path / "run"
    result = cli("train", write_yaml(tmp_path, with_train(checkpoint_interval=1)), "--run-dir", str(run), "--quiet")
    assert result.code == 1 and "Traceback" not in result.err
    assert f"cannot write {run / 'checkpoint.pt'}: No space left on device; its previous version is unchanged" in (
        result.err
    )
    assert load_checkpoint(run)["update"] == 1
    assert [p.name for p in run.iterdir() if p.name.endswith(".tmp")] == []


def test_two_runs_started_in_the_same_second_get_their_own_directories(tmp_path, monkeypatch):
    import datetime as real_datetime

    import sfspec.runtime.train as train_module

    class FrozenClock(real_datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 11, 28, 21, 30, 0)

    monkeypatch.setattr(train_module, "datetime", FrozenClock)
    monkeypatch.chdir(tmp_path)
    first = train_module.default_run_dir("specs/cartpole.yaml")
    first.mkdir(parents=True)
    second = train_module.default_run_dir("specs/cartpole.yaml")
    assert (first.name, second.name) == ("cartpole-20261128-213000", "cartpole-20261128-213000-2")


def test_eval_names_the_backends_it_can_run(cli, tmp_path):
    result = cli("eval", str(tmp_path), "--backend", "pt3")
    assert result.code == 2 and "--backend: 'pt3' is not one of onnx, torchscript" in result.err


def test_eval_and_export_of_a_run_plan_the_model_once(cli, tmp_path, monkeypatch):
    import sfspec.compiler.plan as plan_module
    import sfspec.pipeline as pipeline_module

    run = tmp_path / "run"
    assert cli("train", write_yaml(tmp_path, with_train(steps=BATCH)), "--run-dir", str(run), "--quiet").code == 0
    calls = []
    real = plan_module.plan_model

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    import sfspec.compiler.build as build_module

    for module in (plan_module, pipeline_module, build_module):  # every binding of the name
        monkeypatch.setattr(module, "plan_model", counting)
    for args in (("eval", str(run), "--episodes", "1"), ("export", str(run), "--formats", "onnx")):
        calls.clear()
        result = cli(*args)
        assert result.code == 0, result.err
        assert len(calls) == 1, args


def test_an_algorithm_state_that_would_replace_the_weights_is_refused(tmp_path):
    from sfspec.runtime.ppo import PPO

    class Greedy(PPO):
        def state_dict(self):
            return {**super().state_dict(), "model": {}}

    from sfspec.runtime.algorithm import ALGORITHMS, register_algorithm
    from sfspec.runtime.config import PPO_PARAMS

    register_algorithm("greedy", PPO_PARAMS, Greedy)
    try:
        with pytest.raises(TypeError, match=r"uses the runner's keys \['model'\]"):
            train(with_train(algorithm="greedy", steps=BATCH, checkpoint_interval=1), tmp_path / "run", quiet=True)
    finally:
        ALGORITHMS.unregister("greedy")
