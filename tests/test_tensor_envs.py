"""The bundled tensor environments against gymnasium's classic-control reference implementations."""

from __future__ import annotations

import math
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import pytest
import torch

from sfspec.envs import (
    CartPoleEnv,
    TensorEnv,
    catalogue,
    is_tensor_env,
    make_tensor_env,
    register_tensor_env,
)

ENV_IDS = sorted(catalogue.gymnasium_twins())  # the envs that reproduce a gymnasium env
N = 8  # environments per batch in the parity runs
ATOL = 1e-5

Policy = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _cartpole_policy(obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # Envs 0-3 act randomly (early terminations), 4-7 balance the pole (truncation at 500).
    balance = (obs[:, 2] + 0.5 * obs[:, 3] > 0).astype(np.int64)
    return np.where(np.arange(len(obs)) < 4, rng.integers(0, 2, len(obs)), balance)


def _pendulum_policy(obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # Beyond the +-2 bounds on purpose: the env must clip like gymnasium.
    return rng.uniform(-3.0, 3.0, (len(obs), 1)).astype(np.float32)


def _acrobot_policy(obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # Envs 0-3 act randomly (truncation at 500); 4-7 mostly pump energy (terminations).
    pump = np.where(obs[:, 5] > 0, 2, 0)
    random = (np.arange(len(obs)) < 4) | (rng.random(len(obs)) < 0.2)
    return np.where(random, rng.integers(0, 3, len(obs)), pump)


def _mountain_car_policy(obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # Envs 0-3 act randomly (truncation at 999); 4-7 push along the velocity (goal reached).
    # Magnitudes up to 1.5 check the clipped force and the unclipped action cost.
    pump = np.sign(obs[:, 1:2]) * rng.uniform(0.5, 1.5, (len(obs), 1))
    random = rng.uniform(-1.5, 1.5, (len(obs), 1))
    return np.where(np.arange(len(obs))[:, None] < 4, random, pump).astype(np.float32)


POLICIES: dict[str, Policy] = {
    "sfspec/CartPole-v1": _cartpole_policy,
    "sfspec/Pendulum-v1": _pendulum_policy,
    "sfspec/Acrobot-v1": _acrobot_policy,
    "sfspec/MountainCarContinuous-v0": _mountain_car_policy,
}


def _gym_states(envs: list) -> torch.Tensor:
    return torch.tensor(np.stack([np.asarray(e.state, dtype=np.float64) for e in envs]))


def _random_actions(env: TensorEnv, generator: torch.Generator) -> torch.Tensor:
    space = env.single_action_space
    if isinstance(space, gym.spaces.Discrete):
        return torch.randint(0, int(space.n), (env.num_envs,), generator=generator)
    low, high = float(space.low.min()), float(space.high.max())
    shape = (env.num_envs, *space.shape)
    return torch.rand(shape, generator=generator, dtype=env.dtype) * (high - low) + low


def _check_initial(env_id: str, state: torch.Tensor) -> None:
    """Every row of ``state`` lies in gymnasium's reset distribution for ``env_id``."""
    if env_id == "sfspec/CartPole-v1":
        assert bool((state.abs() <= 0.05).all())
    elif env_id == "sfspec/Pendulum-v1":
        assert bool((state[:, 0].abs() <= math.pi).all()) and bool((state[:, 1].abs() <= 1.0).all())
    elif env_id == "sfspec/Acrobot-v1":
        assert bool((state.abs() <= 0.1).all())
        assert torch.equal(state, state.float().to(state.dtype))  # gymnasium stores it as float32
    else:
        assert bool(((state[:, 0] >= -0.6) & (state[:, 0] <= -0.4)).all())
        assert bool((state[:, 1] == 0).all())


# ------------------------------------------------------------------------------------ parity


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_parity_with_gymnasium(env_id: str) -> None:
    """1,000 steps of the same actions give gymnasium's observations, rewards and episode ends."""
    env = make_tensor_env(env_id, N, dtype=torch.float64, seed=0)
    gym_envs = [gym.make(env.gym_id).unwrapped for _ in range(N)]
    gym_obs = np.stack([e.reset(seed=i)[0] for i, e in enumerate(gym_envs)])
    env.set_state(_gym_states(gym_envs), elapsed_steps=0)
    elapsed = np.zeros(N, dtype=np.int64)
    max_steps = gym.spec(env.gym_id).max_episode_steps
    # Acrobot is chaotic and torch's sin/cos/pow differ from libm by an ulp now and then, so its
    # trajectories separate after ~100 steps; compare it one step at a time from gymnasium's state.
    resync_every_step = env_id == "sfspec/Acrobot-v1"
    rng = np.random.default_rng(0)
    n_terminated = n_truncated = 0

    for t in range(1000):
        actions = POLICIES[env_id](gym_obs, rng)
        results = [e.step(actions[i]) for i, e in enumerate(gym_envs)]
        step_obs = np.stack([r[0] for r in results])
        reward = np.array([r[1] for r in results], dtype=np.float64)
        terminated = np.array([r[2] for r in results])
        elapsed += 1
        truncated = elapsed >= max_steps  # gymnasium's TimeLimit

        obs, t_reward, t_terminated, t_truncated, info = env.step(torch.as_tensor(actions))
        done = terminated | truncated
        assert np.array_equal(t_terminated.numpy(), terminated), f"terminated differs at step {t}"
        assert np.array_equal(t_truncated.numpy(), truncated), f"truncated differs at step {t}"
        close = {"rtol": 0, "atol": ATOL, "err_msg": f"step {t}"}
        np.testing.assert_allclose(t_reward.numpy(), reward, **close)
        np.testing.assert_allclose(info["final_obs"].numpy(), step_obs, **close)  # terminal obs
        np.testing.assert_allclose(obs.numpy()[~done], step_obs[~done], **close)
        n_terminated += int(terminated.sum())
        n_truncated += int(truncated.sum())

        gym_obs = step_obs
        if done.any() or resync_every_step:
            _check_initial(env_id, env.get_state()[torch.as_tensor(done)])
            for i in np.flatnonzero(done):
                gym_obs[i] = gym_envs[i].reset(seed=int(1000 * t + i))[0]
                elapsed[i] = 0
            # Continue from gymnasium's fresh states; step counters stay the tensor env's own.
            rows = torch.as_tensor(done).unsqueeze(-1) | resync_every_step
            env.set_state(torch.where(rows, _gym_states(gym_envs), env.get_state()))

    assert n_truncated > 0, "the run should cover truncation"
    if env_id != "sfspec/Pendulum-v1":  # Pendulum never terminates
        assert n_terminated > 0, "the run should cover termination"


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_spaces_match_gymnasium(env_id: str) -> None:
    env = make_tensor_env(env_id, 3)
    reference = gym.make(env.gym_id)
    assert env.single_observation_space == reference.observation_space
    assert env.single_action_space == reference.action_space
    assert env.single_observation_space.dtype == np.float32
    if isinstance(reference.action_space, gym.spaces.Box):
        assert env.single_action_space.dtype == np.float32
    assert env.observation_space.shape == (3, *reference.observation_space.shape)
    assert env.max_episode_steps == gym.spec(env.gym_id).max_episode_steps


# ------------------------------------------------------------------------------------ autoreset


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_reset_distribution(env_id: str) -> None:
    """Initial states cover the same uniform ranges as gymnasium's ``reset``."""
    env = make_tensor_env(env_id, 4096, dtype=torch.float64, seed=1)
    _, info = env.reset()
    state = env.get_state()
    assert info == {}
    _check_initial(env_id, state)
    assert torch.equal(env.elapsed_steps, torch.zeros(4096, dtype=env.elapsed_steps.dtype))
    spread = state.amax(0) - state.amin(0)
    expected = {
        "sfspec/CartPole-v1": [0.1] * 4,
        "sfspec/Pendulum-v1": [2 * math.pi, 2.0],
        "sfspec/Acrobot-v1": [0.2] * 4,
        "sfspec/MountainCarContinuous-v0": [0.2, 0.0],
    }[env_id]
    torch.testing.assert_close(spread, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=0.01)


def test_autoreset_after_termination() -> None:
    env = CartPoleEnv(4, dtype=torch.float64, seed=0)
    env.reset()
    env.set_state(torch.tensor([2.39, 5.0, 0.0, 0.0]), elapsed_steps=7)  # leaves the track next step
    obs, reward, terminated, truncated, info = env.step(torch.ones(4, dtype=torch.long))
    assert bool(terminated.all()) and not bool(truncated.any())
    torch.testing.assert_close(reward, torch.ones(4, dtype=torch.float64))
    assert bool((info["final_obs"][:, 0] > 2.4).all())  # the terminal observation, before the reset
    _check_initial(env.env_id, obs)
    torch.testing.assert_close(obs, env.get_state())
    assert env.elapsed_steps.tolist() == [0, 0, 0, 0]
    env.step(torch.zeros(4, dtype=torch.long))
    assert env.elapsed_steps.tolist() == [1, 1, 1, 1]


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_truncation_exactly_at_max_episode_steps(env_id: str) -> None:
    env = make_tensor_env(env_id, 16, seed=0, max_episode_steps=5)
    env.reset()
    start = torch.tensor([-0.5, 0.0]) if "MountainCar" in env_id else torch.zeros(env.state_dim)
    env.set_state(start)  # a resting state: nothing terminates within 5 steps
    actions = _random_actions(env, torch.Generator().manual_seed(0)).zero_()
    for step in range(1, 11):
        obs, _, terminated, truncated, info = env.step(actions)
        assert not bool(terminated.any())
        assert bool(truncated.all()) == (step % 5 == 0) and bool(truncated.any()) == (step % 5 == 0)
        assert env.elapsed_steps.tolist() == [step % 5] * 16
        if step % 5 == 0:
            _check_initial(env_id, env.get_state())
            assert not torch.equal(obs, info["final_obs"])


def test_partial_done_keeps_other_envs() -> None:
    env = CartPoleEnv(2, dtype=torch.float64, seed=0)
    env.set_state(torch.tensor([[2.39, 5.0, 0.0, 0.0], [0.0, 0.0, 0.01, 0.0]]), elapsed_steps=3)
    obs, _, terminated, _, info = env.step(torch.tensor([1, 1]))
    assert terminated.tolist() == [True, False]
    torch.testing.assert_close(obs[1], info["final_obs"][1])
    assert env.elapsed_steps.tolist() == [0, 4]


# ------------------------------------------------------------------------------------ seeding


def _rollout(env: TensorEnv, steps: int = 300) -> torch.Tensor:
    gen = torch.Generator().manual_seed(123)
    out = [env.reset()[0]]
    for _ in range(steps):
        out.append(env.step(_random_actions(env, gen))[0])
    return torch.stack(out)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_seeding(env_id: str) -> None:
    first = _rollout(make_tensor_env(env_id, 32, seed=7))
    again = _rollout(make_tensor_env(env_id, 32, seed=7))
    other = _rollout(make_tensor_env(env_id, 32, seed=8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    env = make_tensor_env(env_id, 32, seed=0)
    assert torch.equal(env.reset(seed=7)[0], first[0])  # reset(seed=...) re-seeds the generator


# ------------------------------------------------------------------------------------ dtypes, devices, API


def _devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_default_float32_on_device(env_id: str, device: str) -> None:
    env = make_tensor_env(env_id, 64, device=device, seed=0)
    obs, _ = env.reset()
    shape = (64, *env.single_observation_space.shape)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        obs, reward, terminated, truncated, info = env.step(_random_actions(env, gen).to(device))
    for tensor, dtype, tensor_shape in [
        (obs, torch.float32, shape),
        (info["final_obs"], torch.float32, shape),
        (reward, torch.float32, (64,)),
        (terminated, torch.bool, (64,)),
        (truncated, torch.bool, (64,)),
        (env.get_state(), torch.float32, (64, env.state_dim)),
    ]:
        assert tensor.dtype == dtype and tuple(tensor.shape) == tensor_shape
        assert tensor.device.type == device
    assert bool(torch.isfinite(obs).all())
    env.close()


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
@pytest.mark.filterwarnings("ignore:Synchronization debug mode is a prototype")
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_step_does_not_synchronise(env_id: str) -> None:
    env = make_tensor_env(env_id, 256, device="cuda", seed=0, dtype=torch.float64)
    actions = _random_actions(env, torch.Generator().manual_seed(0)).to("cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # catches .item(), device-to-host copies and the like
    try:
        env.reset()
        for _ in range(20):
            env.step(actions)
    finally:
        torch.cuda.set_sync_debug_mode(0)


@needs_cuda
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_step_replays_as_cuda_graph(env_id: str) -> None:
    env = make_tensor_env(env_id, 1024, device="cuda", seed=0)
    env.reset()
    actions = _random_actions(env, torch.Generator().manual_seed(0)).to("cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up outside the capture, as CUDA graphs require
        for _ in range(3):
            env.step(actions)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    graph.register_generator_state(env.generator)
    with torch.cuda.graph(graph):
        obs, reward, terminated, truncated, info = env.step(actions)
    eager = make_tensor_env(env_id, 1024, device="cuda", seed=1)
    for _ in range(30):
        eager.set_state(env.get_state(), elapsed_steps=env.elapsed_steps)
        e_obs, e_reward, e_terminated, e_truncated, e_info = eager.step(actions)
        graph.replay()
        done = terminated | truncated
        assert torch.equal(terminated, e_terminated) and torch.equal(truncated, e_truncated)
        assert torch.equal(reward, e_reward) and torch.equal(info["final_obs"], e_info["final_obs"])
        assert torch.equal(obs[~done], e_obs[~done])  # the reset rows come from different generators
        assert torch.equal(env.elapsed_steps, eager.elapsed_steps)


def test_box_actions_are_clipped_like_gymnasium() -> None:
    pendulum = make_tensor_env("sfspec/Pendulum-v1", 2, dtype=torch.float64, seed=0)
    pendulum.set_state(torch.tensor([0.3, 0.1]))
    _, reward, *_ = pendulum.step(torch.tensor([[2.0], [50.0]], dtype=torch.float64))
    final = pendulum.get_state()
    assert torch.equal(final[0], final[1]) and reward[0] == reward[1]  # cost uses the clipped torque

    car = make_tensor_env("sfspec/MountainCarContinuous-v0", 2, dtype=torch.float64, seed=0)
    car.set_state(torch.tensor([-0.5, 0.0]))
    _, reward, *_ = car.step(torch.tensor([[1.0], [3.0]]))
    final = car.get_state()
    assert torch.equal(final[0], final[1])  # force is clipped ...
    torch.testing.assert_close(reward, torch.tensor([-0.1, -0.9], dtype=torch.float64))  # ... cost is not


def test_state_roundtrip_and_validation() -> None:
    env = make_tensor_env("sfspec/Acrobot-v1", 3, dtype=torch.float64, seed=0)
    state = torch.arange(12, dtype=torch.float64).reshape(3, 4) / 10
    env.set_state(state, elapsed_steps=torch.tensor([1, 2, 3]))
    assert torch.equal(env.get_state(), state)
    assert env.elapsed_steps.tolist() == [1, 2, 3]
    env.set_state(state)  # elapsed_steps=None leaves the counters alone
    assert env.elapsed_steps.tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="shape"):
        env.set_state(torch.zeros(3, 2))
    with pytest.raises(ValueError):
        make_tensor_env("sfspec/Acrobot-v1", 0)
    with pytest.raises(ValueError):
        make_tensor_env("sfspec/Acrobot-v1", 2, dtype=torch.int64)


def test_unknown_id_suggests_the_closest() -> None:
    with pytest.raises(KeyError, match="did you mean 'sfspec/CartPole-v1'"):
        make_tensor_env("CartPole-v1", 4)
    with pytest.raises(KeyError, match="did you mean 'sfspec/Pendulum-v1'"):
        make_tensor_env("sfspec/Pendulam-v1", 4)
    assert is_tensor_env("sfspec/Acrobot-v1") and not is_tensor_env("Acrobot-v1")


def test_register_custom_env() -> None:
    class LongCartPole(CartPoleEnv):
        env_id = "test/LongCartPole-v0"
        default_max_episode_steps = 1000

    register_tensor_env(LongCartPole.env_id, LongCartPole)
    try:
        env = make_tensor_env("test/LongCartPole-v0", 2, sutton_barto_reward=True)
        assert isinstance(env, LongCartPole) and env.max_episode_steps == 1000
        assert is_tensor_env("test/LongCartPole-v0")
    finally:
        catalogue.remove(LongCartPole.env_id)
    with pytest.raises(TypeError):
        register_tensor_env("test/NotAnEnv-v0", dict)  # type: ignore[arg-type]


@pytest.mark.parametrize("env_id", catalogue.BUNDLED_IDS)
def test_the_catalogue_knows_each_bundled_time_limit_without_torch(env_id: str) -> None:
    """Validation reads the time limit (for env.delay) from the torch-free catalogue: it must be the class's."""
    assert catalogue.episode_limit(env_id) == catalogue.env_class(env_id).default_max_episode_steps
