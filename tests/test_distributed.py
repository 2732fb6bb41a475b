"""Data-parallel training on torchrun (CPU, gloo, 2 processes): equivalence, normalisers, faults, restarts.

Every run goes through ``python -m torch.distributed.run ... sfspec train`` in a subprocess. The
driver script each test writes only instruments the run: it saves every rank's final model to
``OUT/rank<r>.pt``, records where each attempt started, and can inject a fault into one rank.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
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
    import os, signal, sys, torch
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

    fault = os.environ.get("FAULT")  # "kill" or "raise", on rank FAULT_RANK at env step FAULT_AT, first attempt only
    if fault and RANK == int(os.environ["FAULT_RANK"]) and ATTEMPT == 0:
        steps, guarded = [0], vec_env._guarded

        def explode():
            raise RuntimeError("simulator exploded")

        def faulty(env_id, what, call):  # inside the environment's own step, as a simulator fails
            steps[0] += what == "step"
            if what == "step" and steps[0] == int(os.environ["FAULT_AT"]):
                if fault == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                call = explode
            return guarded(env_id, what, call)

        vec_env._guarded = faulty

    run = train_mod.Runner.run

    def instrumented(self, logger, on_log=None):
        with open(f"{OUT}/attempt{ATTEMPT}-rank{self.comm.rank}.txt", "w") as f:
            f.write(str(self.update))
        result = run(self, logger, on_log)
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


def _launch(tmp_path: Path, out: Path, args: list[str], nproc: int | None, **env) -> subprocess.CompletedProcess:
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
    command = [*launcher, str(driver), "train", *args, "-q"]
    return subprocess.run(command, cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=180)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def _assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-12000:]


@pytest.mark.slow
def test_two_ranks_of_n_envs_learn_the_same_weights_as_one_process_of_2n_envs(tmp_path):
    """Gradients averaged, advantages normalised over the global minibatch, the KL and the observation
    normaliser reduced: with the same data, 2 ranks x 4 envs == 1 process x 8 envs after 8 updates."""
    two = _launch(
        tmp_path, tmp_path / "two", [_spec(tmp_path, "CartPole-v1", 4), "--run-dir", "two"], 2, ROWWISE_NOISE="1"
    )
    _assert_ok(two)
    one = _launch(
        tmp_path, tmp_path / "one", [_spec(tmp_path, "CartPole-v1", 8), "--run-dir", "one"], None, ROWWISE_NOISE="1"
    )
    _assert_ok(one)
    single, rank0 = (_weights(tmp_path / d / "rank0.pt") for d in ("one", "two"))
    rank1 = _weights(tmp_path / "two" / "rank1.pt")
    assert load_checkpoint(tmp_path / "two")["update"] == load_checkpoint(tmp_path / "one")["update"] == 4
    for key, value in single.items():
        assert torch.allclose(rank0[key].double(), value.double(), atol=1e-5), key
        assert torch.equal(rank0[key], rank1[key]), f"ranks differ in {key}"
    normaliser = [k for k in single if k.endswith(".mean") and "normalizers" in k]
    assert normaliser and all(rank0[k].abs().sum() > 0 for k in normaliser)


@pytest.mark.slow
def test_every_rank_holds_the_same_normaliser_statistics_and_the_steps_are_the_global_total(tmp_path):
    """Observation and return normalisers merged every update: bit-identical on both ranks; steps count both."""
    spec = _spec(tmp_path, "sfspec/Pendulum-v1", 4, normalize_returns=True, steps=640, checkpoint_interval=50)
    result = _launch(tmp_path, tmp_path / "out", [spec, "--run-dir", "run"], 2)
    _assert_ok(result)
    rank0, rank1 = _weights(tmp_path / "out" / "rank0.pt"), _weights(tmp_path / "out" / "rank1.pt")
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    checkpoint = load_checkpoint(tmp_path / "run")
    # 640 steps over 2 ranks x 4 envs x 16 steps = 128 per update: 5 updates, not 10
    assert checkpoint["update"] == 5 and checkpoint["global_step"] == 640 and checkpoint["world_size"] == 2
    counts = [v for k, v in rank0.items() if k.endswith("count")]
    assert counts and all(c == 640 for c in counts)  # every observation of both ranks, once
    assert checkpoint["return_norm"]["rms.count"] == 640  # every discounted return of both ranks, once
    assert [len(r["carry"]["done"]) for r in checkpoint["ranks"]] == [4, 4]
    rows = parse_metrics((tmp_path / "run" / "metrics.jsonl").read_text())
    assert [r["step"] for r in rows] == [128, 256, 384, 512, 640]


@pytest.mark.slow
def test_a_killed_rank_ends_the_job_naming_it_and_the_run_resumes_exactly(tmp_path):
    """SIGKILL of rank 1 after the checkpoint at update 2: the job ends (exit != 0) naming rank 1, the
    checkpoint is intact, and --resume continues to the same weights as a run never interrupted."""
    spec = _spec(tmp_path, "sfspec/CartPole-v1", 4, steps=768)
    killed = _launch(
        tmp_path, tmp_path / "killed", [spec, "--run-dir", "run"], 2, FAULT="kill", FAULT_RANK="1", FAULT_AT="40"
    )
    assert killed.returncode != 0
    output = killed.stdout + killed.stderr
    assert "rank: 1" in output and "Signal 9" in output, output[-3000:]
    assert "rank 0: another rank stopped" in output, output[-3000:]
    checkpoint = load_checkpoint(tmp_path / "run")  # intact: verified by its checksum
    assert checkpoint["update"] == 2 and len(checkpoint["ranks"]) == 2
    resumed = _launch(tmp_path, tmp_path / "resumed", ["--resume", "run"], 2)
    _assert_ok(resumed)
    straight = _launch(tmp_path, tmp_path / "straight", [spec, "--run-dir", "straight"], 2)
    _assert_ok(straight)
    a, b = _weights(tmp_path / "resumed" / "rank0.pt"), _weights(tmp_path / "straight" / "rank0.pt")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    rows = parse_metrics((tmp_path / "run" / "metrics.jsonl").read_text())
    assert [r["step"] for r in rows] == [128 * i for i in range(1, 7)]


@pytest.mark.slow
def test_an_environment_error_on_one_rank_is_named_with_its_rank(tmp_path):
    spec = _spec(tmp_path, "sfspec/CartPole-v1", 4)
    result = _launch(
        tmp_path, tmp_path / "out", [spec, "--run-dir", "run"], 2, FAULT="raise", FAULT_RANK="1", FAULT_AT="40"
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "sfspec: rank 1: sfspec/CartPole-v1: step raised RuntimeError: simulator exploded" in output, output[-3000:]
    assert load_checkpoint(tmp_path / "run")["update"] == 2  # the last good checkpoint, intact


@pytest.mark.slow
def test_max_restarts_resumes_from_the_last_checkpoint_by_itself(tmp_path):
    """torchrun --max-restarts 1: rank 1 dies in the first attempt; the second attempt finds the run
    (default run directory: by torchrun's job id) and continues from its checkpoint, not from step 0."""
    spec = _spec(tmp_path, "sfspec/CartPole-v1", 4, steps=768)
    out = tmp_path / "out"
    result = _launch(tmp_path, out, [spec], 2, FAULT="kill", FAULT_RANK="1", FAULT_AT="40", MAX_RESTARTS="1")
    _assert_ok(result)
    runs = [d for d in (tmp_path / "runs").iterdir() if (d / "spec.yaml").exists()]
    assert len(runs) == 1, runs
    assert (out / "attempt0-rank0.txt").read_text() == "0"
    assert (out / "attempt1-rank0.txt").read_text() == (out / "attempt1-rank1.txt").read_text() == "2"
    checkpoint = load_checkpoint(runs[0])
    assert checkpoint["finished"] and checkpoint["update"] == 6
    rows = parse_metrics((runs[0] / "metrics.jsonl").read_text())
    assert [r["step"] for r in rows] == [128 * i for i in range(1, 7)]


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
