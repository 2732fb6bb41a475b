"""The algorithm seam: a second algorithm is one class and one registration, validated like PPO's settings."""

from __future__ import annotations

import pytest
import torch
import yaml

from sfspec.runtime.algorithm import ALGORITHMS, register_algorithm
from sfspec.runtime.checkpoint import load_checkpoint
from sfspec.runtime.config import PPO_PARAMS, TrainConfig
from sfspec.runtime.ppo import Carry, Rollout, collect_rollout, compute_gae, make_optimizer
from sfspec.runtime.rundir import parse_metrics

A2C_PARAMS = {
    "rollout": PPO_PARAMS["rollout"],
    "lr": PPO_PARAMS["lr"],
    "gamma": PPO_PARAMS["gamma"],
    "gae_lambda": PPO_PARAMS["gae_lambda"],
    "a2c_entropy": {"type": "number", "minimum": 0, "default": 0.01},
}


class A2C:
    """Advantage actor-critic: one rollout, one gradient step (the whole module a new algorithm needs)."""

    def __init__(self, model, env, train, device, comm=None):  # comm: a single-process example ignores it
        self.model, self.device, self.num_envs = model, device, env.num_envs
        self.cfg = TrainConfig.from_spec({"train": {k: v for k, v in train.items() if k != "a2c_entropy"}})
        self.entropy = train.get("a2c_entropy", A2C_PARAMS["a2c_entropy"]["default"])
        self.optimizer = make_optimizer(model, self.cfg.lr)
        self.steps_per_iteration = self.cfg.rollout * env.num_envs
        self.total_iterations = -(-self.cfg.steps // self.steps_per_iteration)
        self.on_device = env.on_device

    def start(self, obs):
        self.carry = Carry.start(obs, self.model, self.num_envs, self.device)
        size = self.model.layout.size
        self.rollout = Rollout.allocate(self.cfg.rollout, obs, size, 0, self.device, batched_bootstrap=self.on_device)

    def iteration(self, env, index):
        collect_rollout(self.model, env, self.carry, self.rollout, self.cfg, None)
        r = self.rollout
        with torch.no_grad():
            next_value = self.model.values(self.carry.obs, self.carry.state)
        advantages, returns = compute_gae(r, next_value, self.cfg.gamma, self.cfg.gae_lambda)
        log_probs, entropy, values = self.model.evaluate(r.obs, r.states[0], r.starts, r.actions)
        loss = -(advantages * log_probs).mean() + 0.5 * ((returns - values) ** 2).mean() - self.entropy * entropy.mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.detach()}

    def episode_stats(self):
        return self.carry.take_episode_stats()

    def learning_rate(self):
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self):
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state, exact):
        self.optimizer.load_state_dict(state["optimizer"])


@pytest.fixture
def a2c():
    register_algorithm("a2c", A2C_PARAMS, A2C, "advantage actor-critic (test)")
    yield
    ALGORITHMS.unregister("a2c")


def spec_file(tmp_path, train: dict) -> str:
    spec = {"env": {"id": "sfspec/CartPole-v1", "num_envs": 8}, "model": {"encoder": [{"linear": 16}, "tanh"]}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**spec, "train": train}))
    return str(path)


def test_a_registered_algorithm_trains_checkpoints_and_resumes_through_the_cli(cli, tmp_path, a2c):
    run = tmp_path / "run"
    train = {"algorithm": "a2c", "rollout": 8, "steps": 8 * 8 * 3, "a2c_entropy": 0.0, "checkpoint_interval": 1}
    assert cli("train", spec_file(tmp_path, train), "--run-dir", str(run), "--quiet").code == 0
    assert load_checkpoint(run)["update"] == 3
    resumed = cli("train", "--resume", str(run), "--set", "train.steps=320", "--quiet")
    assert resumed.code == 0, resumed.err
    rows = parse_metrics((run / "metrics.jsonl").read_text())
    assert [r["update"] for r in rows] == [1, 2, 3, 4, 5] and all("loss" in r for r in rows)


def test_a_setting_of_another_algorithm_is_refused_with_its_owner(cli, tmp_path, a2c):
    result = cli("validate", spec_file(tmp_path, {"algorithm": "a2c", "epochs": 3}))
    assert result.code == 2
    assert "train.epochs: 'epochs' is a setting of train.algorithm 'ppo', not of 'a2c'" in result.err
    result = cli("validate", spec_file(tmp_path, {"a2c_entropy": 0.1}))  # ppo by default
    assert result.code == 2 and "'a2c_entropy' is a setting of train.algorithm 'a2c', not of 'ppo'" in result.err


def test_an_algorithms_own_settings_are_validated_by_its_fragment(cli, tmp_path, a2c):
    result = cli("validate", spec_file(tmp_path, {"algorithm": "a2c", "a2c_entropy": -1}))
    assert result.code == 2 and "train.a2c_entropy: must be >= 0, got -1" in result.err


def test_an_unknown_algorithm_gets_did_you_mean(cli, tmp_path):
    result = cli("validate", spec_file(tmp_path, {"algorithm": "ppoo"}))
    assert result.code == 2 and "'ppoo' is not one of 'ppo' (did you mean 'ppo'?)" in result.err


def test_ppo_is_the_default_and_can_be_named(cli, tmp_path):
    assert cli("validate", spec_file(tmp_path, {"algorithm": "ppo", "epochs": 2})).code == 0
