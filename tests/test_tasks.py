"""The bundled tasks (memory, pixels, reach) keep the tensor-env contract and mean what they say."""

from __future__ import annotations

import pytest
import torch

from sfspec.envs import catalogue, make_tensor_env

TASKS = [i for i in catalogue.BUNDLED_IDS if i not in catalogue.gymnasium_twins()]


def _random_actions(env, generator):
    space = env.single_action_space
    if hasattr(space, "n"):
        return torch.randint(0, int(space.n), (env.num_envs,), generator=generator)
    return torch.rand(env.num_envs, *space.shape, generator=generator) * 2 - 1


def _rows(obs):
    return obs.items() if isinstance(obs, dict) else [(None, obs)]


@pytest.mark.parametrize("env_id", TASKS)
def test_observations_stay_in_the_declared_spaces(env_id):
    env = make_tensor_env(env_id, 16, seed=0)
    obs_space, action_space = catalogue.env_spaces(env_id, {})
    assert env.single_observation_space == obs_space and env.single_action_space == action_space
    obs, _ = env.reset()
    gen = torch.Generator().manual_seed(0)
    for _ in range(120):
        for key, value in _rows(obs):
            space = obs_space[key] if key else obs_space
            assert value.shape == (16, *space.shape)
            assert all(space.contains(row.numpy()) for row in value[:4])
        obs, reward, terminated, truncated, _ = env.step(_random_actions(env, gen))
        assert reward.shape == terminated.shape == truncated.shape == (16,)


@pytest.mark.parametrize("env_id", TASKS)
def test_same_seed_same_trajectory(env_id):
    def run(seed):
        env = make_tensor_env(env_id, 8, seed=seed)
        env.reset()
        gen = torch.Generator().manual_seed(1)
        return torch.stack([env.step(_random_actions(env, gen))[1] for _ in range(60)])

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


def test_memory_rewards_recalling_the_cue_only():
    env = make_tensor_env("sfspec/Memory-v0", 1000, seed=0, num_cues=4, delay=3)
    obs, _ = env.reset()
    cue = obs[:, :4].argmax(dim=1)
    assert torch.equal(obs[:, :4].sum(dim=1), torch.ones(1000))  # the cue is shown at the start
    for _ in range(3):
        obs, reward, terminated, *_ = env.step(torch.zeros(1000, dtype=torch.long))
        assert obs[:, :4].sum() == 0 and reward.sum() == 0 and not terminated.any()  # then hidden
    assert obs[:, 4].eq(1).all()  # the query flag
    _, reward, terminated, *_ = env.step(cue)
    assert reward.eq(1).all() and terminated.all()
    env.reset()
    _, reward, *_ = [env.step(torch.zeros(1000, dtype=torch.long)) for _ in range(4)][-1]
    assert 0.15 < reward.mean().item() < 0.35  # guessing earns 1/num_cues


def test_pixel_goal_reward_and_picture():
    env = make_tensor_env("sfspec/PixelGoal-v0", 2, seed=0, grid=4, cell=2)
    env.reset()
    env.set_state(torch.tensor([[0.0, 0.0, 1.0, 0.0], [3.0, 3.0, 0.0, 0.0]]), elapsed_steps=0)
    picture = env._observe(env.state)
    assert picture.shape == (2, 8, 8, 3) and picture[0, 0:2, 0:2, 0].eq(255).all()  # agent at (0, 0)
    assert picture[0, 0:2, 2:4, 1].eq(255).all()  # goal at x=1
    _, reward, terminated, *_ = env.step(torch.tensor([3, 0]))  # right reaches the goal; up does not
    assert reward.tolist() == pytest.approx([1.0, -0.01]) and terminated.tolist() == [True, False]


def test_reach_hides_the_truth_from_the_actor_keys():
    env = make_tensor_env("sfspec/Reach-v0", 4, seed=0)
    obs, _ = env.reset()
    true_target = obs["privileged"][:, :2]
    assert not torch.allclose(obs["target_seen"], true_target)  # biased estimate
    assert (obs["target_seen"] - true_target).abs().max() < 0.3
