"""The PPO runtime: each mechanism, and a short training that must clearly learn."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, no_host_sync, rollout_for
from conftest import write_yaml as write

from sfspec.compiler.build import compile_model
from sfspec.io import atomic_write
from sfspec.runtime.checkpoint import load_checkpoint
from sfspec.runtime.config import TrainConfig, scale_defaults
from sfspec.runtime.ppo import Carry, Rollout, collect_rollout, compute_gae
from sfspec.runtime.vec_env import make_env
from sfspec.spec.schema import train_schema

TESTS = Path(__file__).resolve().parent


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def sfspec_process(*args: str, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(TESTS))
    return subprocess.Popen(
        [sys.executable, "-m", "sfspec", *args, "--plugin", "sfspec_testplugin"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kwargs,
    )


CARTPOLE = {
    "env": {"id": "sfspec/CartPole-v1", "num_envs": 32},
    "model": {"encoder": [{"linear": 64}, "tanh", {"linear": 64}, "tanh"]},
    "train": {"steps": 60_000, "rollout": 32, "lr": 2.5e-3, "seed": 1, "log_interval": 5},
}


def test_config_defaults_come_from_the_schema():
    cfg = TrainConfig.from_spec({"train": {"lr": 1e-3, "steps": 1e5}})
    assert cfg.lr == 1e-3 and cfg.steps == 100_000 and isinstance(cfg.steps, int)
    derived = scale_defaults(8)  # no env: the schema's num_envs, 8
    for name, prop in train_schema()["properties"].items():
        if name != "lr" and name != "steps":
            # a setting that depends on the number of environments says so and follows the one rule
            expected = derived[name] if prop.get("x-derived") == "env.num_envs" else prop["default"]
            assert getattr(cfg, name) == expected, name


def test_gae_matches_a_hand_computed_case():
    rollout = Rollout.allocate(3, {"obs": torch.zeros(1, 1)}, 1, 0, "cpu")
    rollout.rewards[:, 0] = torch.tensor([1.0, 2.0, 3.0])
    rollout.values[:, 0] = torch.tensor([0.5, 1.0, 1.5])
    rollout.ends[:, 0] = torch.tensor([0.0, 1.0, 0.0])  # the episode ends after step 1
    g, lam, next_value = 0.9, 0.8, torch.tensor([2.0])
    advantages, returns = compute_gae(rollout, next_value, g, lam)
    d2 = 3.0 + g * 2.0 - 1.5  # bootstraps from next_value
    d1 = 2.0 - 1.0  # episode ended: no bootstrap, no carry-over
    d0 = 1.0 + g * 1.0 - 0.5
    expected = torch.tensor([d0 + g * lam * d1, d1, d2])
    torch.testing.assert_close(advantages[:, 0], expected)
    torch.testing.assert_close(returns[:, 0], expected + rollout.values[:, 0])


def _counter_setup(num_envs: int = 2):
    spec = {
        "env": {"id": "sfspec/Counter-v0", "num_envs": num_envs},
        "model": {"encoder": [{"linear": 8}]},
        "train": {"gamma": 0.5},
    }
    env = make_env(spec["env"], 0, torch.device("cpu"))
    return spec, env, compile_model(spec, env.observation_space, env.action_space)


def test_truncation_bootstraps_from_the_true_final_observation():
    spec, env, model = _counter_setup()
    cfg = TrainConfig.from_spec(spec)
    carry = Carry.start(env.reset(seed=0), model, env.num_envs, torch.device("cpu"))
    rollout = Rollout.allocate(6, carry.obs, 1, 0, "cpu", batched_bootstrap=True)
    collect_rollout(model, env, carry, rollout, cfg, None)
    # obs goes 0, 1, 2 then truncates: the step from obs 2 reaches final obs [3] and is reset to [0]
    assert rollout.obs["obs"][:, 0, 0].tolist() == [0, 1, 2, 0, 1, 2]
    assert rollout.ends[:, 0].tolist() == [0, 0, 1, 0, 0, 1]
    with torch.no_grad():
        v_final = model.values({"obs": torch.tensor([[3.0]])}, model.initial_state(1))
        v_reset = model.values({"obs": torch.tensor([[0.0]])}, model.initial_state(1))
    torch.testing.assert_close(rollout.rewards[2, 0:1], 1.0 + 0.5 * v_final)
    assert not torch.allclose(v_final, v_reset)
    assert rollout.rewards[0, 0] == 1.0  # no bootstrap off a truncation


def test_gymnasium_truncation_uses_final_obs_from_info():
    env = make_env({"id": "CartPole-v1", "num_envs": 2, "kwargs": {"max_episode_steps": 4}}, 0, torch.device("cpu"))
    obs = env.reset(seed=0)
    layout_spec = {"env": {"id": "CartPole-v1"}, "model": {}}
    model = compile_model(layout_spec, env.observation_space, env.action_space)
    last = obs
    for _ in range(4):
        step = env.step(torch.zeros(2, 1), model.layout)
        if step.final_obs is None:
            last = step.obs
    assert step.truncated.all() and step.final_obs is not None
    assert not torch.allclose(step.final_obs["obs"], step.obs["obs"])  # final differs from the reset obs
    assert torch.allclose(step.final_obs["obs"][:, 0], last["obs"][:, 0] + 0.02 * last["obs"][:, 1], atol=1e-5)


def test_recurrent_state_resets_at_episode_starts():
    spec = {"env": {"id": "sfspec/Counter-v0", "num_envs": 2}, "model": {"core": [{"gru": 4}]}}
    env = make_env(spec["env"], 0, torch.device("cpu"))
    model = compile_model(spec, env.observation_space, env.action_space)
    cfg = TrainConfig.from_spec(spec)
    carry = Carry.start(env.reset(seed=0), model, 2, torch.device("cpu"))
    rollout = Rollout.allocate(5, carry.obs, 1, model.state_size, "cpu")
    collect_rollout(model, env, carry, rollout, cfg, None)
    assert rollout.starts[:, 0].tolist() == [1, 0, 0, 1, 0]
    assert rollout.states[2].abs().sum() > 0  # memory carried within an episode (obs 0 leaves it at 0)
    # the stored state at a start is the pre-reset one; evaluate() applies the same reset
    logp, _, values = model.evaluate(rollout.obs, rollout.states[0], rollout.starts, rollout.actions)
    torch.testing.assert_close(values, rollout.values)
    torch.testing.assert_close(logp, rollout.log_probs)


def test_short_cartpole_training_clearly_learns(cli, tmp_path):
    run = tmp_path / "run"
    result = cli("train", write(tmp_path, CARTPOLE), "--run-dir", str(run), "--quiet")
    assert result.code == 0, result.err
    rows = metrics(run)
    for key in (
        "step",
        "time",
        "sps",
        "return_mean",
        "length_mean",
        "policy_loss",
        "value_loss",
        "entropy",
        "approx_kl",
        "clip_fraction",
        "explained_variance",
        "lr",
    ):
        assert key in rows[-1], key
    assert rows[0]["return_mean"] < 40  # a random policy
    # clearly learning (the last interval may finish no 500-step episode: its mean is then None)
    assert [r["return_mean"] for r in rows if r["return_mean"] is not None][-1] > 150
    evaluation = cli("eval", str(run), "--episodes", "8", "--json", "--set", "env.id=CartPole-v1")
    data = json.loads(evaluation.out)
    assert data["episodes"] == 8 and data["return_mean"] > 150
    assert set(data) >= {"return_mean", "return_std", "episodes"}
    assert list((run / "tb").iterdir())  # TensorBoard events
    assert yaml.safe_load((run / "spec.yaml").read_text())["env"]["id"] == "sfspec/CartPole-v1"


def test_same_spec_and_seed_give_the_same_result(cli, tmp_path):
    spec = {**CARTPOLE, "train": {**CARTPOLE["train"], "steps": 8192}}
    path = write(tmp_path, spec)
    runs = [tmp_path / "a", tmp_path / "b"]
    for run in runs:
        assert cli("train", path, "--run-dir", str(run), "--quiet").code == 0
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("time", "sps")} for r in rows]  # noqa: E731
    assert strip(metrics(runs[0])) == strip(metrics(runs[1]))
    a, b = (load_checkpoint(r)["model"] for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_continues_exactly(cli, tmp_path):
    updates = lambda n: n * 32 * 32  # noqa: E731 (rollout * num_envs)
    spec = {**CARTPOLE, "train": {**CARTPOLE["train"], "steps": updates(4), "checkpoint_interval": 2}}
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert cli("train", write(tmp_path, spec), "--run-dir", str(straight), "--quiet").code == 0
    half = {**spec, "train": {**spec["train"], "steps": updates(2)}}
    assert cli("train", write(tmp_path, half, "half.yaml"), "--run-dir", str(split), "--quiet").code == 0
    assert load_checkpoint(split)["update"] == 2
    result = cli("train", "--resume", str(split), "--set", f"train.steps={updates(4)}", "--quiet")
    assert result.code == 0, result.err
    a, b = load_checkpoint(straight), load_checkpoint(split)
    assert b["update"] == 4 and b["finished"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(x, y) for x, y in zip(a["carry"]["obs"].values(), b["carry"]["obs"].values()))
    assert [r["step"] for r in metrics(split)][-1] == updates(4)


def test_atomic_write_survives_a_crash_mid_write(tmp_path):
    path = tmp_path / "checkpoint.pt"
    atomic_write(path, lambda f: f.write(b"good"))

    def crash(f):
        f.write(b"half a fi")
        raise OSError("disk pulled")

    with pytest.raises(OSError):
        atomic_write(path, crash)
    assert path.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary left behind


def test_checkpoint_loads_with_weights_only_and_rejects_foreign_files(tmp_path, cli):
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"not a checkpoint")
    result = cli("eval", str(tmp_path))
    assert result.code == 1 and "cannot read checkpoint" in result.err and "Traceback" not in result.err


def _wait_for(path: Path, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.slow  # two training processes (each importing torch) per case
@pytest.mark.parametrize("how", ["sigint", "sigkill"])
def test_interrupt_and_kill_keep_a_checkpoint_that_resumes(tmp_path, how):
    spec = {**CARTPOLE, "train": {**CARTPOLE["train"], "steps": 2_000_000, "checkpoint_interval": 1}}
    run = tmp_path / "run"
    proc = sfspec_process("train", write(tmp_path, spec), "--run-dir", str(run), "--quiet")
    _wait_for(run / "checkpoint.pt")
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT if how == "sigint" else signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    if how == "sigint":
        assert proc.returncode == 130 and "checkpoint saved" in err and "Traceback" not in err
    else:
        assert proc.returncode == -signal.SIGKILL
    saved = load_checkpoint(run)
    assert saved["update"] >= 1
    resume = sfspec_process(
        "train", "--resume", str(run), "--set", f"train.steps={(saved['update'] + 1) * 1024}", "--quiet"
    )
    _, err = resume.communicate(timeout=120)
    assert resume.returncode == 0, err
    assert load_checkpoint(run)["update"] == saved["update"] + 1


def test_environment_error_stops_with_a_message_and_keeps_the_checkpoint(tmp_path, cli):
    spec = {
        "env": {"id": "SpaceTest/Raises-v0", "num_envs": 1, "kwargs": {"after": 40}},
        "model": {},
        "train": {"rollout": 16, "checkpoint_interval": 1, "steps": 1000},
    }
    run = tmp_path / "run"
    result = cli("train", write(tmp_path, spec), "--run-dir", str(run), "--quiet")  # in-process: no torch import
    assert result.code == 1
    assert "SpaceTest/Raises-v0: step raised RuntimeError: simulator exploded (at step 32)" in result.err
    assert "Traceback" not in result.err
    assert load_checkpoint(run)["update"] == 2  # the last good one


def test_nan_reward_stops_with_a_message_and_keeps_the_checkpoint(tmp_path, cli):
    spec = {
        "env": {"id": "sfspec/Counter-v0", "num_envs": 2, "kwargs": {"nan_at": 20}},
        "model": {},
        "train": {"rollout": 8, "checkpoint_interval": 1, "steps": 1000},
    }
    run = tmp_path / "run"
    result = cli("train", write(tmp_path, spec), "--run-dir", str(run), "--quiet")
    assert result.code == 1
    assert "sfspec/Counter-v0 returned a non-finite reward (in steps 32-48)" in result.err
    saved = load_checkpoint(run)
    assert saved["update"] == 2 and all(torch.isfinite(v).all() for v in saved["model"].values())


@pytest.mark.parametrize(
    "env_id", ["SpaceTest/Dict-v0", "SpaceTest/Mixed-v0", "SpaceTest/DictAction-v0", "SpaceTest/Masked-v0"]
)
def test_training_runs_on_every_space(cli, tmp_path, env_id):
    """SpaceEnv asserts that every action it receives lies in its action space."""
    model = {"encoder": [{"linear": 16}]}
    if env_id == "SpaceTest/Dict-v0":
        model = {
            "encoder": {"inputs": {"camera": ["flatten", {"linear": 8}]}},
            "normalize_obs": True,
            "action": {"bounds": "tanh"},
        }
    if env_id == "SpaceTest/Masked-v0":
        model["action"] = {"mask": "action_mask"}
    spec = {"env": {"id": env_id, "num_envs": 2}, "model": model, "train": {"rollout": 16, "steps": 64}}
    result = cli("train", write(tmp_path, spec), "--run-dir", str(tmp_path / "run"), "--quiet")
    assert result.code == 0, result.err


def test_recurrent_training_with_truncated_bptt(cli, tmp_path):
    spec = yaml.safe_load((ROOT / "specs" / "memory.yaml").read_text())
    spec["train"].update({"steps": 2 * 64 * 16, "rollout": 16, "bptt": 8})
    run = tmp_path / "run"
    assert cli("train", write(tmp_path, spec), "--run-dir", str(run), "--quiet").code == 0
    assert len(metrics(run)) == 2
    spec["train"]["bptt"] = 5
    bad = cli("train", write(tmp_path, spec, "bad.yaml"), "--run-dir", str(tmp_path / "bad"), "--quiet")
    assert bad.code == 1 and "train.bptt (5) must divide train.rollout (16)" in bad.err


def test_plot_writes_a_png(cli, tmp_path, tiny_run):
    run = tiny_run  # the session's shared run: plotting only reads it
    out = tmp_path / "curves.png"
    result = cli("plot", str(run), str(run), "--out", str(out))
    assert result.code == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli("plot", str(tmp_path / "nothing")).code == 2


def test_rollout_makes_no_host_synchronisation_with_a_tensor_env(monkeypatch):
    """With a device env, nothing in a rollout reads a tensor back to the host."""
    spec = {
        "env": {"id": "sfspec/CartPole-v1", "num_envs": 8},
        "model": {"core": [{"gru": 8}]},
        "train": {"normalize_returns": True},
    }
    _, rollout, collect = rollout_for(spec)
    with no_host_sync(monkeypatch):
        collect()
    assert rollout.ends.sum() > 0  # episodes ended (and were reset) inside the rollout


def test_next_step_autoreset_env_reports_the_reset_steps():
    """gymnasium's own batched CartPole resets on the step after an episode ends: that step is masked."""
    env = make_env({"id": "CartPole-v1", "num_envs": 4, "vectorization": "vector_entry_point"}, 0, torch.device("cpu"))
    assert env.next_step_reset
    spec = {"env": {"id": "CartPole-v1"}, "model": {}}
    model = compile_model(spec, env.observation_space, env.action_space)
    carry = Carry.start(env.reset(seed=0), model, 4, torch.device("cpu"))
    rollout = Rollout.allocate(100, carry.obs, 1, 0, "cpu", masked=True)
    collect_rollout(model, env, carry, rollout, TrainConfig.from_spec(spec), None)
    ended = rollout.ends * rollout.valid  # real episode ends
    assert ended.sum() > 0
    # every real end is followed by exactly one masked reset step (when inside the rollout)
    following = rollout.valid[1:][ended[:-1] > 0]
    assert following.numel() > 0 and following.sum() == 0
    assert (rollout.valid == 0).sum() == (ended[:-1] > 0).sum()
    _, length, episodes = carry.take_episode_stats()
    assert episodes == int(ended.sum()) and length > 8


@pytest.mark.parametrize(
    "options",
    [
        {"lr_schedule": "kl_adaptive", "desired_kl": 1e-4},
        {"target_kl": 1e-6, "value_clip": 0.2, "normalize_returns": True},
        {"lr_schedule": "linear", "max_grad_norm": None, "normalize_advantages": False},
        {"amp": True},
    ],
)
def test_training_options(cli, tmp_path, options):
    spec = {**CARTPOLE, "train": {**CARTPOLE["train"], "steps": 3 * 1024, "log_interval": 1, **options}}
    run = tmp_path / "run"
    result = cli("train", write(tmp_path, spec), "--run-dir", str(run), "--quiet")
    assert result.code == 0, result.err
    rows = metrics(run)
    assert all(r["loss"] == r["loss"] for r in rows)  # finite
    if options.get("lr_schedule") == "kl_adaptive":
        assert rows[-1]["lr"] != CARTPOLE["train"]["lr"]  # adapted
    if options.get("lr_schedule") == "linear":
        assert rows[0]["lr"] > rows[-1]["lr"]


def test_vector_entry_point_training(cli, tmp_path):
    spec = {
        "env": {"id": "CartPole-v1", "num_envs": 4, "vectorization": "vector_entry_point"},
        "model": {},
        "train": {"rollout": 64, "steps": 512, "log_interval": 1},
    }
    run = tmp_path / "run"
    assert cli("train", write(tmp_path, spec), "--run-dir", str(run), "--quiet").code == 0
    assert metrics(run)[-1]["length_mean"] > 5


def test_train_never_overwrites_a_saved_run(cli, tmp_path):
    spec = {**CARTPOLE, "train": {**CARTPOLE["train"], "steps": 1024}}
    path = write(tmp_path, spec)
    run = tmp_path / "run"
    assert cli("train", path, "--run-dir", str(run), "--quiet").code == 0
    before = (run / "checkpoint.pt").read_bytes()
    again = cli("train", path, "--run-dir", str(run), "--quiet")
    assert again.code == 2 and "already holds a run" in again.err
    assert (run / "checkpoint.pt").read_bytes() == before


def test_async_vector_env_training(cli, tmp_path):
    spec = {
        "env": {"id": "CartPole-v1", "num_envs": 2, "vectorization": "async", "kwargs": {"max_episode_steps": 20}},
        "model": {},
        "train": {"rollout": 32, "steps": 128, "log_interval": 1},
    }
    run = tmp_path / "run"
    assert cli("train", write(tmp_path, spec), "--run-dir", str(run), "--quiet").code == 0
    assert metrics(run)[-1]["length_mean"] <= 20  # the time limit truncates, episodes are counted
