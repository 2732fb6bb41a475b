"""Data-parallel training on torchrun (CPU, gloo, 2 processes): equivalence, normalisers, faults, restarts.

Every run goes through ``python -m torch.distributed.run ... sfspec train`` in a subprocess. The
driver script each test writes only instruments the run: it saves every rank's final model to
``OUT/rank<r>.pt``, records where each attempt started and which checkpoints each rank wrote, can
inject a fault into one rank, and can hold rank 0 at an update until the test's signal has come.

Launches cost seconds each (three Python processes importing torch), so the tests share them: one
uninterrupted 2-rank run (the ``straight`` fixture) is what the stopped, killed and restarted runs
must end equal to, and one run directory goes through a killed rank, SIGTERM and Ctrl-C in turn.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml

from sfspec.runtime.checkpoint import load_checkpoint
from sfspec.runtime.distributed import NoComm, merge_moments, torchrun_launch
from sfspec.runtime.rundir import parse_metrics

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

DRIVER = textwrap.dedent(
    """
    import os, signal, sys, time, torch
    import sfspec.compiler.heads as heads
    from sfspec.runtime import train as train_mod, vec_env

    OUT = os.environ["SFSPEC_TEST_OUT"]
    RANK, WORLD = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    ATTEMPT = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))

    if os.environ.get("ROWWISE_NOISE"):
        # The same sampling noise for global env row i in any layout of ranks: rank r draws the
        # whole (WORLD * n) table of each call and keeps its rows, so the data match one process's.
        calls = [0]

        def rowwise_gumbel(logits):
            calls[0] += 1
            n = logits.shape[0]
            table = torch.rand(n * WORLD, logits.shape[1], generator=torch.Generator().manual_seed(calls[0]))
            u = table[RANK * n : (RANK + 1) * n].clamp_(1e-10, 1.0 - 1e-7)
            return (logits - torch.log(-torch.log(u))).argmax(dim=1)

        heads._gumbel_argmax = rowwise_gumbel

    # "kill", "raise" or "nan" (the step's observations become NaN), on rank FAULT_RANK at env step
    # FAULT_AT, first attempt only
    fault = os.environ.get("FAULT")
    if fault and RANK == int(os.environ["FAULT_RANK"]) and ATTEMPT == 0:
        steps, guarded = [0], vec_env._guarded

        def explode():
            raise RuntimeError("simulator exploded")

        def faulty(env_id, what, call):  # inside the environment's own step, as a simulator fails
            steps[0] += what == "step"
            if what == "step" and steps[0] >= int(os.environ["FAULT_AT"]):
                if fault == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                if fault == "raise":
                    call = explode
                if fault == "nan":
                    obs, *rest = call()
                    return guarded(env_id, what, lambda: (obs.clone().fill_(float("nan")), *rest))
            return guarded(env_id, what, call)

        vec_env._guarded = faulty

    # Every checkpoint file a rank writes, by update: a stop must add exactly one, on rank 0.
    save_checkpoint = train_mod.save_checkpoint

    def noted_save(path, state):
        save_checkpoint(path, state)
        with open(f"{OUT}/saves-rank{RANK}.txt", "a") as f:
            f.write(f"{state['update']} ")

    train_mod.save_checkpoint = noted_save

    # STOP_AT=k: after update k's log line, rank 0 says "ready" and waits until its stop signal has
    # come (the test sends it), so the ranks agree to stop at update k + 1, whatever the timing.
    signalled, request = [False], train_mod._StopSignals._request

    def noted_request(self, signum, frame):
        signalled[0] = True
        request(self, signum, frame)

    train_mod._StopSignals._request = noted_request
    log = train_mod.Runner._log

    def log_then_wait(self, stats, on_log):
        stop = log(self, stats, on_log)
        if self.comm.rank == 0 and os.environ.get("SNAPSHOTS"):  # rank 0's weights after every update
            weights = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
            torch.save(weights, f"{OUT}/update{self.update}.pt")
        if self.comm.rank == 0 and self.update == int(os.environ.get("STOP_AT", -1)):
            open(f"{OUT}/ready", "w").close()
            deadline = time.monotonic() + 120
            while not signalled[0] and time.monotonic() < deadline:
                time.sleep(0.01)
        return stop

    train_mod.Runner._log = log_then_wait
    run = train_mod.Runner.run

    def instrumented(self, logger, on_log=None, *args):
        with open(f"{OUT}/attempt{ATTEMPT}-rank{self.comm.rank}.txt", "w") as f:
            f.write(str(self.update))
        result = run(self, logger, on_log, *args)
        torch.save({k: v.detach().cpu() for k, v in self.model.state_dict().items()}, f"{OUT}/rank{self.comm.rank}.pt")
        return result

    train_mod.Runner.run = instrumented
    from sfspec.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def _spec(tmp_path: Path, env_id: str, num_envs: int, **train) -> str:
    spec = {
        "env": {"id": env_id, "num_envs": num_envs},
        "model": {"encoder": [{"linear": 16}, "tanh"], "normalize_obs": True},
        "train": {
            "steps": 512,
            "rollout": 16,
            "epochs": 2,
            "minibatches": 1,
            "lr": 3e-3,
            "lr_schedule": "kl_adaptive",
            "log_interval": 1,
            "checkpoint_interval": 2,
            "device": "cpu",
            **train,
        },
    }
    path = tmp_path / f"spec-{num_envs}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def _command(tmp_path: Path, out: Path, args: list[str], nproc: int | None, env: dict) -> tuple[list[str], dict]:
    """``torchrun --standalone`` (``nproc`` processes) or a plain process (``nproc`` None) running the driver."""
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    out.mkdir(parents=True, exist_ok=True)
    environ = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    environ.update({"SFSPEC_TEST_OUT": str(out), "OMP_NUM_THREADS": "1", **env})
    launcher = [sys.executable]
    if nproc is not None:
        restarts = environ.pop("MAX_RESTARTS", "0")
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
        launcher += ["--monitor-interval=0.1", f"--max-restarts={restarts}"]
    return [*launcher, str(driver), "train", *args, "-q"], environ


def _launch(tmp_path: Path, out: Path, args: list[str], nproc: int | None, **env) -> subprocess.CompletedProcess:
    """Run the driver to its end (see ``_command``)."""
    command, environ = _command(tmp_path, out, args, nproc, env)
    return subprocess.run(command, cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=180)


def _launch_and_stop(tmp_path: Path, out: Path, args: list[str], stop_at: int, send) -> tuple[int, str]:
    """A 2-rank job in a session of its own (as a terminal starts it); ``send(pid)`` once rank 0 is past update
    ``stop_at``. Returns the job's exit status and output."""
    command, environ = _command(tmp_path, out, args, 2, {"STOP_AT": str(stop_at)})
    with open(out / "output.txt", "w") as output:
        job = subprocess.Popen(command, cwd=tmp_path, env=environ, stdout=output, stderr=output, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while not (out / "ready").exists() and job.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            assert (out / "ready").exists(), (out / "output.txt").read_text()[-3000:]
            send(job.pid)
            code = job.wait(timeout=120)
        finally:
            if job.poll() is None:  # only after a failed assertion: torchrun stops its ranks, or is killed
                job.terminate()
                try:
                    job.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    job.kill()
    return code, (out / "output.txt").read_text()


def _saves(out: Path, rank: int) -> list[int]:
    """The updates whose checkpoint ``rank`` wrote in the run whose driver wrote to ``out``."""
    path = out / f"saves-rank{rank}.txt"
    return [int(u) for u in path.read_text().split()] if path.exists() else []


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def _assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-12000:]


def _rowwise_gumbel(world: int, rank: int):
    """The driver's ROWWISE_NOISE sampler, for a run in this process (the one-process side of a comparison)."""
    calls = [0]

    def rowwise_gumbel(logits):
        calls[0] += 1
        n = logits.shape[0]
        table = torch.rand(n * world, logits.shape[1], generator=torch.Generator().manual_seed(calls[0]))
        u = table[rank * n : (rank + 1) * n].clamp_(1e-10, 1.0 - 1e-7)
        return (logits - torch.log(-torch.log(u))).argmax(dim=1)

    return rowwise_gumbel


@pytest.mark.slow
def test_two_ranks_of_n_envs_learn_the_same_weights_as_one_process_of_2n_envs(
    tmp_path, cli, monkeypatch, keep_thread_count
):
    """Gradients averaged, advantages normalised over the global minibatch, the KL and the observation
    normaliser reduced: with the same data, 2 ranks x 4 envs == 1 process x 8 envs after 4 updates.
    (The one process runs in this one: a launch fewer.)"""
    import sfspec.compiler.heads as heads

    two = _launch(
        tmp_path, tmp_path / "two", [_spec(tmp_path, "CartPole-v1", 4), "--run-dir", "two"], 2, ROWWISE_NOISE="1"
    )
    _assert_ok(two)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(heads, "_gumbel_argmax", _rowwise_gumbel(1, 0))
    one = cli("train", _spec(tmp_path, "CartPole-v1", 8), "--run-dir", str(tmp_path / "one"), "-q")
    assert one.code == 0, one.err
    single = load_checkpoint(tmp_path / "one")["model"]  # its final weights: the checkpoint of the last update
    rank0, rank1 = _weights(tmp_path / "two" / "rank0.pt"), _weights(tmp_path / "two" / "rank1.pt")
    assert load_checkpoint(tmp_path / "two")["update"] == load_checkpoint(tmp_path / "one")["update"] == 4
    for key, value in single.items():
        assert torch.allclose(rank0[key].double(), value.double(), atol=1e-5), key
        assert torch.equal(rank0[key], rank1[key]), f"ranks differ in {key}"
    normaliser = [k for k in single if k.endswith(".mean") and "normalizers" in k]
    assert normaliser and all(rank0[k].abs().sum() > 0 for k in normaliser)


UPDATES = 8  # of the shared 2-rank run: 2 ranks x 4 envs x 16 steps = 128 steps per update


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """One 2-rank run never interrupted (shared: the tests that stop, kill or restart a run compare with it)."""
    tmp_path = tmp_path_factory.mktemp("straight")
    result = _launch(tmp_path, tmp_path / "out", [_straight_spec(tmp_path), "--run-dir", "run"], 2, SNAPSHOTS="1")
    _assert_ok(result)
    return tmp_path


def _straight_spec(tmp_path: Path) -> str:
    return _spec(tmp_path, "sfspec/CartPole-v1", 4, normalize_returns=True, steps=128 * UPDATES)


def _assert_same_weights(out: Path, straight: Path) -> None:
    a, b = _weights(out / "rank0.pt"), _weights(straight / "out" / "rank0.pt")
    for key in b:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
def test_every_rank_holds_the_same_normaliser_statistics_and_the_steps_are_the_global_total(straight):
    """Observation and return normalisers merged every update: bit-identical on both ranks; steps count both;
    rank 0 alone writes checkpoints."""
    rank0, rank1 = _weights(straight / "out" / "rank0.pt"), _weights(straight / "out" / "rank1.pt")
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    checkpoint = load_checkpoint(straight / "run")
    # 1024 steps over 2 ranks x 4 envs x 16 steps = 128 per update: 8 updates, not 16
    assert checkpoint["update"] == UPDATES and checkpoint["global_step"] == 1024 and checkpoint["world_size"] == 2
    counts = [v for k, v in rank0.items() if k.endswith("count")]
    assert counts and all(c == 1024 for c in counts)  # every observation of both ranks, once
    assert checkpoint["return_norm"]["rms.count"] == 1024  # every discounted return of both ranks, once
    assert [len(r["carry"]["done"]) for r in checkpoint["ranks"]] == [4, 4]
    rows = parse_metrics((straight / "run" / "metrics.jsonl").read_text())
    assert [r["step"] for r in rows] == [128 * i for i in range(1, UPDATES + 1)]
    assert _saves(straight / "out", 0) == [2, 4, 6, 8] and _saves(straight / "out", 1) == []


def _assert_stopped_once(code: int, output: str, out: Path, run: Path, at: int, straight: Path) -> None:
    """Both ranks stopped together at update ``at`` by themselves (each says so; torchrun had to kill none),
    and rank 0 alone wrote one checkpoint there, intact, beside the one of the interval before; its weights
    are the uninterrupted run's at that update (the run resumed before it was exact)."""
    assert code != 0 and output.count(f"sfspec: interrupted at step {128 * at:,}; checkpoint saved") == 2, output
    # The one traceback is torchrun's own report of the signal it got; no rank failed.
    assert output.count("Traceback") == output.count("SignalException: Process") == 1, output[-3000:]
    assert "sfspec/runtime" not in output and "driver.py" not in output, output[-3000:]
    assert "Unable to shutdown process" not in output and "SIGKILL" not in output, output[-3000:]
    assert _saves(out, 0) == [at - 1, at] and _saves(out, 1) == []
    checkpoint = load_checkpoint(run)  # intact: verified by its checksum
    assert checkpoint["update"] == at and not checkpoint["finished"] and len(checkpoint["ranks"]) == 2
    expected = _weights(straight / "out" / f"update{at}.pt")
    assert all(torch.equal(checkpoint["model"][k], v) for k, v in expected.items())


@pytest.mark.slow
def test_a_killed_rank_then_sigterm_then_ctrl_c_each_keep_an_intact_checkpoint_and_resume_exactly(tmp_path, straight):
    """One run, stopped three ways and resumed each time, ends with the weights of a run never stopped.

    1. SIGKILL of rank 1 in update 3: the job ends naming rank 1, the checkpoint of update 2 is intact.
    2. ``--resume``; SIGTERM to the torchrun agent (as ``kill`` or a scheduler sends it), which forwards it
       to the ranks: they stop together at the next update boundary, rank 0 saves once, the job exits.
    3. ``--resume``; SIGINT to the job's whole process group (a terminal's Ctrl-C): the same.
    4. ``--resume`` to the end: the same weights as the uninterrupted run, bit for bit (tensor envs).
    """
    spec, run = _straight_spec(tmp_path), tmp_path / "run"
    killed = _launch(
        tmp_path, tmp_path / "killed", [spec, "--run-dir", "run"], 2, FAULT="kill", FAULT_RANK="1", FAULT_AT="40"
    )
    assert killed.returncode != 0
    output = killed.stdout + killed.stderr
    assert "rank: 1" in output and "Signal 9" in output, output[-3000:]
    # Rank 0 says so itself, and so does torchrun's summary: torchrun's SIGTERM to the ranks left, which
    # comes as rank 0 reports, must not kill it first.
    assert "sfspec: rank 0: another rank stopped" in output, output[-3000:]
    assert "traceback : TrainingError: rank 0: another rank stopped" in output, output[-3000:]
    assert load_checkpoint(run)["update"] == 2 and _saves(tmp_path / "killed", 0) == [2]

    sigterm = tmp_path / "sigterm"
    code, output = _launch_and_stop(tmp_path, sigterm, ["--resume", "run"], 4, lambda pid: os.kill(pid, signal.SIGTERM))
    _assert_stopped_once(code, output, sigterm, run, 5, straight)

    ctrl_c = tmp_path / "ctrl_c"
    code, output = _launch_and_stop(tmp_path, ctrl_c, ["--resume", "run"], 6, lambda pid: os.killpg(pid, signal.SIGINT))
    _assert_stopped_once(code, output, ctrl_c, run, 7, straight)

    resumed = _launch(tmp_path, tmp_path / "resumed", ["--resume", "run"], 2)
    _assert_ok(resumed)
    assert _saves(tmp_path / "resumed", 0) == [8]
    _assert_same_weights(tmp_path / "resumed", straight)
    rows = parse_metrics((run / "metrics.jsonl").read_text())
    assert [r["step"] for r in rows] == [128 * i for i in range(1, UPDATES + 1)]


@pytest.mark.slow
def test_nan_observations_on_one_rank_end_the_job_naming_that_rank(tmp_path):
    """Rank 1's environment returns NaN observations from step 40 (update 3) on: every rank stops at that
    update's reduction with the same error naming rank 1 (none waits for another), the checkpoint of
    update 2 is kept, and no rank had to be killed by torchrun."""
    spec = _spec(tmp_path, "sfspec/CartPole-v1", 4)
    result = _launch(
        tmp_path, tmp_path / "out", [spec, "--run-dir", "run"], 2, FAULT="nan", FAULT_RANK="1", FAULT_AT="40"
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    message = "sfspec: rank 1: sfspec/CartPole-v1 returned a non-finite observation 'obs' (in steps 256-384)"
    assert output.count(message) == 2, output[-3000:]  # printed by both ranks
    assert "exitcode  : 1 " in output and "Signal" not in output and "Unable to shutdown" not in output, output[-3000:]
    assert f"traceback : TrainingError: {message[8:]}" in output, output[-3000:]  # torchrun's summary says why
    saved = load_checkpoint(tmp_path / "run")
    assert saved["update"] == 2 and all(torch.isfinite(v).all() for v in saved["model"].values())


@pytest.mark.slow
def test_an_environment_error_on_one_rank_is_named_and_max_restarts_resumes_from_the_last_checkpoint(
    tmp_path, straight
):
    """torchrun --max-restarts 1: rank 1's environment raises in update 3 of the first attempt; both ranks
    say why (rank 1 its error, rank 0 that another rank stopped). The second attempt finds the run (default
    run directory: by torchrun's job id) and continues from its checkpoint of update 2, not from step 0,
    to the weights of a run never interrupted."""
    out = tmp_path / "out"
    result = _launch(
        tmp_path, out, [_straight_spec(tmp_path)], 2, FAULT="raise", FAULT_RANK="1", FAULT_AT="40", MAX_RESTARTS="1"
    )
    _assert_ok(result)
    output = result.stdout + result.stderr
    assert "sfspec: rank 1: sfspec/CartPole-v1: step raised RuntimeError: simulator exploded" in output, output[-3000:]
    assert "sfspec: rank 0: another rank stopped" in output, output[-3000:]
    runs = [d for d in (tmp_path / "runs").iterdir() if (d / "spec.yaml").exists()]
    assert len(runs) == 1, runs
    assert (out / "attempt0-rank0.txt").read_text() == "0"
    assert (out / "attempt1-rank0.txt").read_text() == (out / "attempt1-rank1.txt").read_text() == "2"
    checkpoint = load_checkpoint(runs[0])
    assert checkpoint["finished"] and checkpoint["update"] == UPDATES
    rows = parse_metrics((runs[0] / "metrics.jsonl").read_text())
    assert [r["step"] for r in rows] == [128 * i for i in range(1, UPDATES + 1)]
    _assert_same_weights(out, straight)


def test_a_single_process_gets_the_no_op_communicator_and_torchrun_is_detected():
    assert torchrun_launch({}) is None
    launch = torchrun_launch(
        {
            "RANK": "1",
            "WORLD_SIZE": "2",
            "LOCAL_RANK": "1",
            "TORCHELASTIC_RESTART_COUNT": "3",
            "TORCHELASTIC_RUN_ID": "x",
        }
    )
    assert (launch.rank, launch.world_size, launch.local_rank, launch.restart_count, launch.run_id) == (1, 2, 1, 3, "x")
    comm = NoComm()
    t = torch.ones(3)
    assert comm.all_reduce_sum_(t) is t and not comm.active and comm.any(True) and not comm.any(False)


def test_merged_moments_equal_those_of_all_samples_together():
    """The parallel count/mean/M2 merge of per-rank batches is the moments of the concatenated batch."""
    torch.manual_seed(0)
    parts = [torch.randn(n, 3, dtype=torch.float64) * (i + 1) + i for i, n in enumerate((5, 11, 7))]
    rows = torch.stack([torch.cat([torch.tensor([len(p)]), p.mean(0), p.var(0, unbiased=False)]) for p in parts])
    count, mean, var = merge_moments(rows.double(), 3)
    everything = torch.cat(parts)
    assert count == 23
    assert torch.allclose(mean, everything.mean(0)) and torch.allclose(var, everything.var(0, unbiased=False))


def test_the_rank_failure_message_and_the_launch_marker(tmp_path):
    from sfspec.runtime.rundir import find_launched_run, mark_launch
    from sfspec.runtime.train import TrainingError, _rank_failure

    assert str(_rank_failure(TrainingError("boom"), 1)) == "rank 1: boom"
    assert "rank 0: another rank stopped" in str(_rank_failure(RuntimeError("[gloo] Connection closed by peer"), 0))
    first, second = tmp_path / "runs" / "a-1", tmp_path / "runs" / "a-2"
    first.mkdir(parents=True)
    mark_launch(first, "job")
    assert find_launched_run(second, "job") == first  # a restart's new default name finds the first attempt's
    assert find_launched_run(second, "other") is None and find_launched_run(first, "") is None
    planted = tmp_path / "runs" / "a-3"  # a marker someone else wrote, far longer than any job id
    planted.mkdir()
    (planted / ".torchrun").write_text("job" + " " * 10_000 + "x")
    assert find_launched_run(planted, "job" + " " * 10_000 + "x") is None  # read bounded: never that marker


def test_a_non_finite_loss_on_one_rank_is_named_with_that_rank_on_every_rank():
    """The loss reduction gathers every rank's loss: a NaN loss of rank 1 (from finite data) stops each rank
    with the same error naming rank 1, so none is left waiting in a collective for another."""
    from sfspec.runtime.errors import TrainingError
    from sfspec.runtime.ppo import Rollout, reduce_and_check

    class TwoRanks(NoComm):
        world_size, active = 2, True

        def all_gather_rows(self, row):
            other = row.clone()
            other[0] = float("nan")  # rank 1's loss
            return torch.stack([row, other])

    rollout = Rollout.allocate(4, {"obs": torch.zeros(2, 3)}, 1, 0, "cpu")
    stats = {"loss": torch.tensor(0.5), "kl": torch.tensor(0.01)}
    with pytest.raises(TrainingError, match=r"^rank 1: the loss became nan at step 16 of X-v0"):
        reduce_and_check(stats, torch.zeros(2), rollout, "X-v0", 1, 8, TwoRanks())
    assert reduce_and_check(stats, torch.zeros(2), rollout, "X-v0", 1, 8, NoComm())["loss"] == 0.5


def test_train_nproc_starts_torchrun_with_the_same_arguments(cli, tmp_path, monkeypatch):
    """``sfspec train --nproc N`` is torchrun's launcher for N ranks of the same command (its ranks train)."""
    import sfspec.cli

    calls = []
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setattr(sfspec.cli.subprocess, "call", lambda command: calls.append(command) or 0)
    spec = tmp_path / "spec.yaml"
    spec.write_text("env: {id: sfspec/CartPole-v1}\nmodel: {}\n")
    args = ["train", str(spec), "--nproc", "2", "--run-dir", "r", "--set", "train.steps=64", "--plugin", "json", "-q"]
    assert cli(*args).code == 0
    (command,) = calls
    assert command[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    assert command[5:] == [
        "-m",
        "sfspec",
        "train",
        str(spec),
        "--run-dir",
        "r",
        "--plugin",
        "json",
        "--set",
        "train.steps=64",
        "-q",
    ]
    assert cli("train", str(spec), "--nproc", "0").code == 2  # a usage error, not a launch
