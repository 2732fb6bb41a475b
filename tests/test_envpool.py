"""``env.vectorization: envpool``: the spec's errors, training through the CLI, seeding, and autoreset.

The error paths that do not need EnvPool run everywhere (a missing package is simulated, an
EnvPool registry faked); the rest skips, saying why, where the optional ``envpool`` package is absent.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from sfspec.compiler.spaces import action_layout
from sfspec.runtime.vec_env import EnvStepError, make_env

try:
    import envpool  # noqa: F401

    HAVE_ENVPOOL = True
except ImportError:
    HAVE_ENVPOOL = False

needs_envpool = pytest.mark.skipif(not HAVE_ENVPOOL, reason="the optional envpool package is not installed")
CPU = torch.device("cpu")

ENVPOOL_SPEC = """
model: {{}}
env:
  id: {id}
  num_envs: 2
  vectorization: envpool
"""  # env last, so a test can append env.kwargs


@pytest.fixture
def no_envpool(monkeypatch):
    """Make ``import envpool`` fail as it does where the package is not installed."""
    monkeypatch.setitem(sys.modules, "envpool", None)


@pytest.fixture
def fake_envpool(monkeypatch):
    """An EnvPool whose registry holds CartPole-v1 and its own preprocessed Atari id (no simulator needed)."""
    module = types.ModuleType("envpool")
    module.list_all_envs = lambda: ["CartPole-v1", "Pong-v5"]
    monkeypatch.setitem(sys.modules, "envpool", module)


def test_envpool_not_installed_is_a_spec_error_at_vectorization(cli, write_spec, no_envpool):
    result = cli("validate", write_spec(ENVPOOL_SPEC.format(id="HalfCheetah-v5")))
    assert result.code == 2, result.err
    assert "spec.yaml:5:18: env.vectorization:" in result.err
    assert "needs the envpool package" in result.err and "pip install 'sfspec[envpool]'" in result.err
    assert "Traceback" not in result.err


def test_envpool_not_installed_fails_make_env_with_a_named_error(no_envpool):
    with pytest.raises(EnvStepError, match="needs the envpool package"):
        make_env({"id": "CartPole-v1", "num_envs": 2, "vectorization": "envpool"}, 0, CPU)


def test_an_id_envpool_does_not_run_is_named_with_a_suggestion(cli, write_spec, fake_envpool):
    result = cli("validate", write_spec(ENVPOOL_SPEC.format(id="CartPole-v0")))
    assert result.code == 2, result.err
    assert "5:18: env.vectorization: EnvPool has no 'CartPole-v0' (did you mean 'CartPole-v1'?)" in result.err
    assert "use vectorization: async" in result.err


def test_envpools_own_atari_id_is_refused_as_not_gymnasiums_task(cli, write_spec, fake_envpool):
    result = cli("validate", write_spec(ENVPOOL_SPEC.format(id="Pong-v5")))
    assert result.code == 2, result.err
    assert "env.vectorization: 'Pong-v5' is EnvPool's own id, not a gymnasium one" in result.err


def test_envpool_for_a_tensor_env_is_a_spec_error_even_without_envpool(cli, write_spec, no_envpool):
    result = cli("validate", write_spec(ENVPOOL_SPEC.format(id="sfspec/CartPole-v1")))
    assert result.code == 2, result.err
    assert "5:18: env.vectorization: 'sfspec/CartPole-v1' is a tensor environment" in result.err


def test_envpool_kwargs_may_not_set_the_seed_sfspec_sets(cli, write_spec, fake_envpool):
    result = cli("validate", write_spec(ENVPOOL_SPEC.format(id="CartPole-v1") + "  kwargs: {seed: 3}\n"))
    assert result.code == 2, result.err
    assert "6:12: env.kwargs.seed: 'seed' is set by sfspec" in result.err


@needs_envpool
def test_envpool_task_with_other_spaces_than_gymnasiums_is_refused(cli, write_spec):
    result = cli("validate", write_spec(ENVPOOL_SPEC.format(id="Blackjack-v1")))
    assert result.code == 2, result.err
    assert "env.vectorization: EnvPool's 'Blackjack-v1' has the observation space" in result.err
    assert "not the same task" in result.err


@needs_envpool
def test_an_option_envpools_task_lacks_is_a_spec_error_at_kwargs(cli, write_spec):
    result = cli("validate", write_spec(ENVPOOL_SPEC.format(id="CartPole-v1") + "  kwargs: {bogus: 1}\n"))
    assert result.code == 2, result.err
    assert "6:11: env.kwargs: EnvPool's 'CartPole-v1' refuses these kwargs" in result.err
    assert "max_episode_steps" in result.err  # its options are listed


def _train(cli, tmp_path: Path, name: str, seed: int = 3) -> Path:
    spec = {
        "env": {"id": "CartPole-v1", "num_envs": 4, "vectorization": "envpool"},
        "model": {},
        "train": {"steps": 1024, "rollout": 64, "epochs": 2, "minibatches": 2, "log_interval": 1, "seed": seed},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(spec))
    run = tmp_path / name
    result = cli("train", str(path), "--run-dir", str(run), "--quiet")
    assert result.code == 0, result.err
    return run


def _learning_rows(run: Path) -> list[dict]:
    """metrics.jsonl without its clock columns."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in ("time", "sps")} for row in rows]


@needs_envpool
def test_training_on_envpool_through_the_cli_counts_episodes_and_evaluates(cli, tmp_path):
    run = _train(cli, tmp_path, "run")
    rows = _learning_rows(run)
    assert rows[-1]["step"] == 1024 and sum(r["episodes"] for r in rows) > 10
    assert all(r["length_mean"] >= 8 for r in rows if r["episodes"])  # the masked reset steps are not counted
    evaluated = cli("eval", str(run), "--episodes", "3")
    assert evaluated.code == 0, evaluated.err
    assert "3 episodes" in evaluated.out


@needs_envpool
def test_two_envpool_runs_with_the_same_seed_learn_the_same(cli, tmp_path):
    first, second = _train(cli, tmp_path, "a"), _train(cli, tmp_path, "b")
    other = _train(cli, tmp_path, "c", seed=4)
    assert _learning_rows(first) == _learning_rows(second)
    assert _learning_rows(first) != _learning_rows(other)


@needs_envpool
def test_envpool_env_i_is_seeded_with_seed_plus_i_and_a_new_seed_resets_anew():
    env = make_env({"id": "CartPole-v1", "num_envs": 3, "vectorization": "envpool"}, 5, CPU)
    single = make_env({"id": "CartPole-v1", "num_envs": 1, "vectorization": "envpool"}, 6, CPU)
    try:
        first = env.reset(seed=5)["obs"]
        assert torch.equal(first[1], single.reset(seed=6)["obs"][0])
        assert torch.equal(env.reset(seed=5)["obs"], first)  # the same seed again: the same start
        assert not torch.equal(env.reset(seed=7)["obs"], first)
    finally:
        env.close()
        single.close()


def _gymnasium_twin(max_episode_steps: int, state: np.ndarray):
    """gymnasium's CartPole-v1 put in the state EnvPool's episode starts from (CartPole's state is its observation)."""
    import gymnasium as gym

    twin = gym.make("CartPole-v1", max_episode_steps=max_episode_steps)
    twin.reset(seed=0)
    twin.unwrapped.state = state.astype(np.float64)
    return twin


@needs_envpool
@pytest.mark.parametrize("max_episode_steps", [500, 6])  # episodes that terminate, and that are truncated
def test_envpool_autoreset_and_final_observation_match_gymnasium(max_episode_steps):
    cfg = {"id": "CartPole-v1", "num_envs": 1, "vectorization": "envpool", "kwargs": {}}
    cfg["kwargs"]["max_episode_steps"] = max_episode_steps
    env = make_env(cfg, 0, CPU)
    layout = action_layout(env.action_space)
    obs = env.reset(seed=0)["obs"][0].numpy()
    twin, ends = _gymnasium_twin(max_episode_steps, obs), 0
    try:
        for _ in range(40):
            step = env.step(torch.ones(1, 1), layout)  # always push right: the pole falls within ~10 steps
            if not bool(step.valid[0]):  # EnvPool's reset step: no transition, a new episode's first observation
                assert float(step.reward[0]) == 0 and not bool(step.terminated[0] | step.truncated[0])
                twin.close()
                twin = _gymnasium_twin(max_episode_steps, step.obs["obs"][0].numpy())
                continue
            expected, reward, terminated, truncated, _ = twin.step(1)
            np.testing.assert_allclose(step.obs["obs"][0].numpy(), expected, rtol=1e-5, atol=1e-6)
            assert (float(step.reward[0]), bool(step.terminated[0]), bool(step.truncated[0])) == (
                reward,
                terminated,
                truncated and not terminated,
            )
            if terminated or truncated:  # the ending step's observation is the true final one
                ends += 1
                np.testing.assert_allclose(step.final_obs["obs"][0].numpy(), expected, rtol=1e-5, atol=1e-6)
        assert ends >= 3
    finally:
        twin.close()
        env.close()


@needs_envpool
def test_envpool_halfcheetah_follows_gymnasiums_mujoco_from_the_same_state():
    """EnvPool compiles its own MuJoCo: from one state and the same actions, ten steps agree to 1e-9."""
    import gymnasium as gym

    env = make_env({"id": "HalfCheetah-v5", "num_envs": 1, "vectorization": "envpool"}, 0, CPU)
    layout = action_layout(env.action_space)
    twin = gym.make("HalfCheetah-v5").unwrapped
    twin.reset(seed=0)
    try:
        obs = env.reset(seed=0)["obs"][0].numpy()  # qpos without the x position, then qvel
        twin.set_state(np.concatenate([[0.0], obs[:8]]), obs[8:])
        actions = torch.as_tensor(np.random.default_rng(0).uniform(-1, 1, (10, 1, 6)), dtype=torch.float32)
        for action in actions:
            step = env.step(action, layout)
            expected, reward, *_ = twin.step(action[0].numpy())
            np.testing.assert_allclose(step.obs["obs"][0].numpy(), expected, atol=1e-9)
            assert abs(float(step.reward[0]) - reward) < 1e-5  # the adapter's rewards are float32
    finally:
        twin.close()
        env.close()
