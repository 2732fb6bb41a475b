"""train: defaults derived from env.num_envs: the rule's values, in summary and in the run; explicit values win."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import ROOT, write_yaml

from sfspec import pipeline
from sfspec.runtime.checkpoint import load_checkpoint, save_checkpoint
from sfspec.runtime.config import DERIVED, TrainConfig
from sfspec.runtime.rundir import parse_metrics

pytestmark = pytest.mark.usefixtures("keep_thread_count")  # training applies the thread policy


def env_and_model(num_envs: int, **train) -> dict:
    """A spec that gives only env and model (and ``train`` keys, if any)."""
    spec = {"env": {"id": "sfspec/CartPole-v1", "num_envs": num_envs}, "model": {"encoder": [{"linear": 16}, "tanh"]}}
    return {**spec, "train": train} if train else spec


def summary_train(cli, tmp_path, spec: dict) -> dict:
    result = cli("summary", write_yaml(tmp_path, spec), "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)["train"]


def test_summary_shows_long_rollouts_for_few_environments(cli, tmp_path):
    train = summary_train(cli, tmp_path, env_and_model(8))
    # docs/runtime.md: a rollout for 2,048 steps per update (256 at 8 envs), 5 x 4, adaptive lr from 1e-3
    assert {k: train[k] for k in DERIVED} == {
        "rollout": 256,
        "epochs": 5,
        "minibatches": 4,
        "lr": 1e-3,
        "lr_schedule": "kl_adaptive",
        "steps": 1_000_000,
    }
    assert sorted(train["derived"]) == sorted(DERIVED) and train["minibatch"] == 512


def test_summary_shows_rsl_rl_like_defaults_for_thousands_of_environments(cli, tmp_path):
    train = summary_train(cli, tmp_path, env_and_model(4096))
    assert (train["rollout"], train["epochs"], train["minibatches"]) == (24, 5, 4)
    assert train["lr_schedule"] == "kl_adaptive" and train["lr"] == 1e-3
    assert train["steps"] == 100 * 24 * 4096  # the budget: at least 100 updates


def test_summary_text_marks_the_derived_values(cli, tmp_path):
    result = cli("summary", write_yaml(tmp_path, env_and_model(64, lr=3e-4)))
    assert result.code == 0, result.err
    assert "rollout 32 *" in result.out and "lr 0.0003," in result.out
    assert "derived from env.num_envs (64)" in result.out


def test_explicit_train_values_win_over_the_derived_ones(cli, tmp_path):
    given = {"rollout": 16, "epochs": 2, "minibatches": 1, "lr": 3e-4, "lr_schedule": "constant", "steps": 5000}
    train = summary_train(cli, tmp_path, env_and_model(4096, **given))
    assert {k: train[k] for k in DERIVED} == given and train["derived"] == []


def test_the_run_writes_the_derived_values_into_its_resolved_spec(cli, tmp_path):
    run = tmp_path / "run"
    spec = env_and_model(2, steps=1024, epochs=1)  # derived: a 512-step rollout, so one update
    assert cli("train", write_yaml(tmp_path, spec), "--run-dir", str(run), "--quiet").code == 0
    written = yaml.safe_load((run / "spec.yaml").read_text())["train"]
    derived = {"rollout": 512, "minibatches": 4, "lr": 1e-3, "lr_schedule": "kl_adaptive"}
    assert written == {"steps": 1024, "epochs": 1, **derived}
    assert load_checkpoint(run)["spec"]["train"] == written
    assert [row["step"] for row in parse_metrics((run / "metrics.jsonl").read_text())] == [1024]


def test_resuming_a_run_written_before_the_rule_keeps_the_defaults_it_was_trained_with(cli, tmp_path):
    run = tmp_path / "run"
    old = {"rollout": 128, "epochs": 4, "minibatches": 4, "lr": 3e-4, "lr_schedule": "constant", "steps": 256}
    assert cli("train", write_yaml(tmp_path, env_and_model(2, **old)), "--run-dir", str(run), "--quiet").code == 0
    checkpoint = load_checkpoint(run)  # as such a run's checkpoint was: its spec without the defaults
    checkpoint["spec"]["train"] = {"steps": 256}
    save_checkpoint(run / "checkpoint.pt", checkpoint)
    assert cli("train", "--resume", str(run), "--set", "train.steps=512", "--quiet").code == 0
    rows = parse_metrics((run / "metrics.jsonl").read_text())
    assert [row["step"] for row in rows] == [256, 512]  # a 128-step rollout of 2 envs, not the rule's 512
    assert rows[-1]["lr"] == 3e-4


def test_memory_estimate_counts_the_derived_rollout(tmp_path):
    checked = pipeline.check(pipeline.load(write_yaml(tmp_path, env_and_model(8))))
    assert checked.memory.rollout == 256 and checked.memory.num_envs == 8


@pytest.mark.parametrize("path", sorted((ROOT / "specs").glob("*.yaml")), ids=lambda p: p.name)
def test_bundled_specs_keep_the_train_values_they_set(path):
    spec = pipeline.load(path).data
    given, cfg = spec.get("train", {}), TrainConfig.from_spec(spec)
    for key in set(DERIVED) & set(given):
        assert getattr(cfg, key) == given[key], key
