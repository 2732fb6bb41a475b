"""train.threads: auto picks one thread for small and recurrent models, an explicit count wins, runs record it."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import write_yaml

from sfspec.runtime.checkpoint import load_checkpoint
from sfspec.runtime.threads import WORK_PER_THREAD, auto_threads, choose_threads

pytestmark = pytest.mark.usefixtures("keep_thread_count")

TINY = {
    "env": {"id": "sfspec/CartPole-v1", "num_envs": 4},
    "model": {"encoder": [{"linear": 16}, "tanh"]},
    "train": {"steps": 64, "rollout": 16, "epochs": 1, "minibatches": 1},
}


def with_train(**changes) -> dict:
    return {**TINY, "train": {**TINY["train"], **changes}}


def test_auto_trains_a_small_mlp_with_one_thread_and_records_it(cli, tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(2)
    run = tmp_path / "run"
    assert cli("train", write_yaml(tmp_path, TINY), "--run-dir", str(run), "--quiet").code == 0
    assert torch.get_num_threads() == 1 and load_checkpoint(run)["threads"] == 1


def test_an_explicit_thread_count_is_used_and_recorded(cli, tmp_path):
    torch.set_num_threads(1)
    run = tmp_path / "run"
    assert cli("train", write_yaml(tmp_path, with_train(threads=2)), "--run-dir", str(run), "--quiet").code == 0
    assert load_checkpoint(run)["threads"] == 2


def test_resume_keeps_the_runs_thread_count_over_the_policy(cli, tmp_path):
    run = tmp_path / "run"
    assert cli("train", write_yaml(tmp_path, with_train(threads=2)), "--run-dir", str(run), "--quiet").code == 0
    torch.set_num_threads(1)
    assert cli("train", "--resume", str(run), "--set", "train.steps=128", "--quiet").code == 0
    assert torch.get_num_threads() == 2 and load_checkpoint(run)["threads"] == 2


def test_eval_applies_the_thread_policy(cli, tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    run = tmp_path / "run"
    assert cli("train", write_yaml(tmp_path, TINY), "--run-dir", str(run), "--quiet").code == 0
    torch.set_num_threads(2)
    result = cli("eval", str(run), "--episodes", "1", "--json")
    assert result.code == 0, result.err
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("value", [0, "many", 1.5])
def test_a_bad_thread_count_is_a_spec_error(cli, tmp_path, value):
    result = cli("validate", "--no-env", write_yaml(tmp_path, with_train(threads=value)))
    assert result.code == 2 and "Traceback" not in result.err
    assert "train.threads" in result.err


def test_summary_shows_one_thread_for_a_recurrent_core(cli, tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    spec = {**TINY, "model": {"encoder": [{"linear": 16}], "core": [{"lstm": {"hidden": 32, "layers": 2}}]}}
    result = cli("summary", write_yaml(tmp_path, spec), "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["train"]["threads"] == 1


def test_recurrent_cores_get_one_thread_however_large():
    assert auto_threads(10_000_000, 65536, recurrent=True, cores=64) == 1


def test_auto_threads_grow_with_the_work_up_to_half_the_cores():
    assert auto_threads(9_000, 4096, cores=2) == 1  # a 64-64 MLP at 4,096 envs: too little to split
    assert auto_threads(WORK_PER_THREAD, 3, cores=16) == 3
    assert auto_threads(10_000_000, 65536, cores=16) == 8
    assert auto_threads(10_000_000, 65536, cores=2) == 1  # two cores: one for torch, one for the rest


def test_auto_leaves_a_users_omp_num_threads_alone(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert choose_threads("auto", 9_000, 8, recurrent=False) == 3
    assert choose_threads(2, 9_000, 8, recurrent=False) == 2  # the spec's explicit count wins over it
