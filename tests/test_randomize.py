"""Domain randomisation of tensor environments: ``env.randomize``, the TensorEnv parameter API, its spec errors."""

from __future__ import annotations

import math
from typing import ClassVar

import gymnasium as gym
import pytest
import torch
from conftest import no_host_sync, rollout_for, write_yaml

from sfspec.envs import CartPoleEnv, catalogue, make_tensor_env, register_tensor_env
from sfspec.runtime.checkpoint import load_checkpoint
from sfspec.runtime.vec_env import make_env

RANDOMISED = ("sfspec/CartPole-v1", "sfspec/Pendulum-v1", "sfspec/Acrobot-v1", "sfspec/Reach-v0")


def _actions(env, generator: torch.Generator) -> torch.Tensor:
    space = env.single_action_space
    if isinstance(space, gym.spaces.Discrete):
        return torch.randint(0, int(space.n), (env.num_envs,), generator=generator)
    return torch.rand(env.num_envs, *space.shape, generator=generator) * 2 - 1


def _ranges(env_id: str) -> dict[str, tuple[float, float]]:
    """Every parameter of ``env_id`` drawn within +-30 % of its nominal value."""
    return {name: (0.7 * value, 1.3 * value) for name, value in catalogue.env_parameters(env_id).items()}


# ---------------------------------------------------------------------------- the parameters


def test_bundled_envs_expose_their_physics_with_gymnasiums_nominal_values() -> None:
    cartpole = gym.make("CartPole-v1").unwrapped
    pendulum = gym.make("Pendulum-v1").unwrapped
    acrobot = gym.make("Acrobot-v1").unwrapped
    car = gym.make("MountainCarContinuous-v0").unwrapped
    expected = {
        "sfspec/CartPole-v1": {
            "gravity": cartpole.gravity,
            "cart_mass": cartpole.masscart,
            "pole_mass": cartpole.masspole,
            "pole_half_length": cartpole.length,
            "force": cartpole.force_mag,
        },
        "sfspec/Pendulum-v1": {"gravity": pendulum.g, "mass": pendulum.m, "length": pendulum.l},
        "sfspec/Acrobot-v1": {
            "gravity": 9.8,  # a local constant in gymnasium's _dsdt
            "link_length_1": acrobot.LINK_LENGTH_1,
            "link_mass_1": acrobot.LINK_MASS_1,
            "link_mass_2": acrobot.LINK_MASS_2,
            "link_com_1": acrobot.LINK_COM_POS_1,
            "link_com_2": acrobot.LINK_COM_POS_2,
            "link_moi": acrobot.LINK_MOI,
        },
        "sfspec/MountainCarContinuous-v0": {"power": car.power, "gravity": 0.0025},
    }
    for env_id, values in expected.items():
        assert catalogue.env_parameters(env_id) == values
        env = make_tensor_env(env_id, 3)
        assert dict(type(env).parameters) == values  # the class reads the catalogue's table
        for name, value in values.items():
            assert torch.equal(env.params[name], torch.full((3,), value, dtype=torch.float64))
    assert set(catalogue.env_parameters("sfspec/Reach-v0")) == {"link_length", "gain", "damping"}


def _cartpole_step_with_constants(state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """gymnasium's CartPole step with its Python-float constants, as the env computed it before it had parameters."""
    gravity, masspole, length, force_mag, tau = 9.8, 0.1, 0.5, 10.0, 0.02
    total_mass, polemass_length = masspole + 1.0, masspole * length
    x, x_dot, theta, theta_dot = state.unbind(-1)
    force = torch.where(actions == 1, force_mag, -force_mag).to(state.dtype)
    costheta, sintheta = torch.cos(theta), torch.sin(theta)
    temp = (force + polemass_length * theta_dot.square() * sintheta) / total_mass
    thetaacc = (gravity * sintheta - costheta * temp) / (
        length * (4.0 / 3.0 - masspole * costheta.square() / total_mass)
    )
    xacc = temp - polemass_length * thetaacc * costheta / total_mass
    return torch.stack((x + tau * x_dot, x_dot + tau * xacc, theta + tau * theta_dot, theta_dot + tau * thetaacc), -1)


def _acrobot_dsdt_with_constants(s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """gymnasium's Acrobot ``_dsdt`` (book variant) with its Python-float constants."""
    m1 = m2 = l1 = i1 = i2 = 1.0
    lc1 = lc2 = 0.5
    g, pi = 9.8, math.pi
    theta1, theta2, dtheta1, dtheta2 = s.unbind(-1)
    cos2, sin2 = torch.cos(theta2), torch.sin(theta2)
    d1 = m1 * lc1**2 + m2 * (l1**2 + lc2**2 + 2 * l1 * lc2 * cos2) + i1 + i2
    d2 = m2 * (lc2**2 + l1 * lc2 * cos2) + i2
    phi2 = m2 * lc2 * g * torch.cos(theta1 + theta2 - pi / 2.0)
    phi1 = (
        -m2 * l1 * lc2 * dtheta2**2 * sin2
        - 2 * m2 * l1 * lc2 * dtheta2 * dtheta1 * sin2
        + (m1 * lc1 + m2 * l1) * g * torch.cos(theta1 - pi / 2)
        + phi2
    )
    numerator = a + d2 / d1 * phi1 - m2 * l1 * lc2 * dtheta1**2 * sin2 - phi2
    ddtheta2 = numerator / (m2 * lc2**2 + i2 - d2**2 / d1)
    ddtheta1 = -(d2 * ddtheta2 + phi1) / d1
    return torch.stack((dtheta1, dtheta2, ddtheta1, ddtheta2), dim=-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nominal_parameters_give_the_constants_arithmetic_bit_for_bit(dtype: torch.dtype) -> None:
    """Per-row parameters at their nominal values compute exactly what the Python-float constants did.

    In float32 a product of constants must round once, as a Python float meeting a tensor does
    (Acrobot's (m1*lc1 + m2*l1)*g rounds differently when computed in float32).
    """
    generator = torch.Generator().manual_seed(0)
    n = 4096
    cartpole = make_tensor_env("sfspec/CartPole-v1", n, dtype=dtype, seed=0)
    state = (torch.rand(n, 4, generator=generator, dtype=dtype) - 0.5) * 0.4
    actions = torch.randint(0, 2, (n,), generator=generator)
    cartpole.set_state(state)
    _, _, _, _, info = cartpole.step(actions)
    assert torch.equal(info["final_obs"], _cartpole_step_with_constants(state, actions))

    acrobot = make_tensor_env("sfspec/Acrobot-v1", n, dtype=dtype, seed=0)
    s = (torch.rand(n, 4, generator=generator, dtype=dtype) - 0.5) * 8
    torque = torch.randint(-1, 2, (n,), generator=generator).to(dtype)
    assert torch.equal(acrobot._dsdt(s, torque, acrobot._coefficients()), _acrobot_dsdt_with_constants(s, torque))


@pytest.mark.parametrize("env_id", RANDOMISED)
def test_default_parameters_reproduce_the_unrandomised_dynamics(env_id: str) -> None:
    """Ranges pinned at the nominal values draw, but change nothing: the same states and rewards step by step."""
    plain = make_tensor_env(env_id, 16, dtype=torch.float64, seed=0)
    pinned = make_tensor_env(env_id, 16, dtype=torch.float64, seed=0)
    pinned.set_randomization({name: (value, value) for name, value in catalogue.env_parameters(env_id).items()})
    plain.reset()
    pinned.reset(seed=5)  # a different stream: the draws move it, so states are copied across
    generator = torch.Generator().manual_seed(1)
    for _ in range(40):
        pinned.set_state(plain.get_state(), plain.elapsed_steps)
        actions = _actions(plain, generator)
        _, reward, terminated, _, info = plain.step(actions)
        _, pinned_reward, pinned_terminated, _, pinned_info = pinned.step(actions)
        assert torch.equal(reward, pinned_reward) and torch.equal(terminated, pinned_terminated)
        assert _flat(info["final_obs"]).equal(_flat(pinned_info["final_obs"]))
    assert all(torch.equal(plain.params[k], pinned.params[k]) for k in plain.params)


def _flat(obs: torch.Tensor | dict) -> torch.Tensor:
    return torch.cat([v.double().flatten(1) for v in obs.values()], 1) if isinstance(obs, dict) else obs


@pytest.mark.parametrize("env_id", RANDOMISED)
def test_ranges_are_respected_per_row_and_redrawn_only_where_an_episode_starts(env_id: str) -> None:
    env = make_tensor_env(env_id, 64, seed=0, max_episode_steps=7)
    ranges = _ranges(env_id)
    env.set_randomization(ranges)
    env.reset()
    before = env.get_parameters()
    for name, (low, high) in ranges.items():
        assert bool(((before[name] >= low) & (before[name] <= high)).all())
        assert before[name].unique().numel() > 32  # one draw per row, not one for the batch
    generator = torch.Generator().manual_seed(0)
    resets = 0
    for _ in range(20):
        _, _, terminated, truncated, _ = env.step(_actions(env, generator))
        done = terminated | truncated
        after = env.get_parameters()
        for name, (low, high) in ranges.items():
            changed = after[name] != before[name]
            assert torch.equal(changed, done), name  # every new episode draws; no running one does
            assert bool(((after[name] >= low) & (after[name] <= high)).all())
        resets += int(done.sum())
        before = after
    assert resets >= 64 * 2  # the 7-step limit ended every episode at least twice


def test_draws_come_from_the_env_generator_so_the_seed_fixes_them() -> None:
    runs = []
    for _ in range(2):
        env = make_tensor_env("sfspec/Pendulum-v1", 8, seed=3)
        env.set_randomization({"mass": (0.5, 2.0), "length": (0.5, 1.5)})
        env.reset()
        for _ in range(250):  # past the 200-step limit: every row redraws once
            env.step(torch.zeros(8, 1))
        runs.append((env.get_parameters(), env.get_state()))
    assert all(torch.equal(runs[0][0][k], runs[1][0][k]) for k in runs[0][0])
    assert torch.equal(runs[0][1], runs[1][1])


def test_a_row_with_a_doubled_pole_length_behaves_differently() -> None:
    env = make_tensor_env("sfspec/CartPole-v1", 2, dtype=torch.float64, seed=0)
    nominal = make_tensor_env("sfspec/CartPole-v1", 1, dtype=torch.float64, seed=0)
    env.set_parameters({"pole_half_length": 2 * CartPoleEnv.parameters["pole_half_length"]}, rows=torch.tensor([1]))
    start = torch.tensor([0.0, 0.0, 0.05, 0.0], dtype=torch.float64)
    env.set_state(start)
    nominal.set_state(start)
    for _ in range(5):
        obs, *_ = env.step(torch.tensor([1, 1]))
        expected, *_ = nominal.step(torch.tensor([1]))
    assert torch.equal(obs[0], expected[0])  # the nominal row is untouched
    assert not torch.allclose(obs[1], obs[0])
    assert obs[1, 3] > obs[0, 3]  # a longer pole falls more slowly: less angular velocity lost to the push


def test_set_parameters_takes_a_mask_or_indices_and_names_an_unknown_parameter() -> None:
    env = make_tensor_env("sfspec/Acrobot-v1", 4)
    env.set_parameters(
        {"link_mass_2": torch.tensor([2.0, 3.0, 4.0, 5.0])}, rows=torch.tensor([True, False, True, False])
    )
    assert env.params["link_mass_2"].tolist() == [2.0, 1.0, 4.0, 1.0]
    env.set_parameters({"link_mass_2": 7.0, "gravity": torch.tensor([1.0, 2.0])}, rows=torch.tensor([3, 1]))
    assert env.params["link_mass_2"].tolist() == [2.0, 7.0, 4.0, 7.0]
    assert env.params["gravity"].tolist() == [9.8, 2.0, 9.8, 1.0]
    with pytest.raises(KeyError, match="no parameter 'link_mas_2' \\(did you mean 'link_mass_2'"):
        env.set_parameters({"link_mas_2": 1.0})
    with pytest.raises(KeyError, match="no parameter 'mass'"):
        env.set_randomization({"mass": (1.0, 2.0)})
    with pytest.raises(ValueError, match="low <= high"):
        env.set_randomization({"gravity": (10.0, 9.0)})
    with pytest.raises(ValueError, match="finite"):
        env.set_randomization({"gravity": (9.0, math.inf)})


def test_pendulum_keyword_g_sets_its_nominal_gravity() -> None:
    env = make_tensor_env("sfspec/Pendulum-v1", 2, g=9.81)
    assert env.params["gravity"].tolist() == [9.81, 9.81]


def test_rollout_with_randomisation_makes_no_host_synchronisation(monkeypatch) -> None:
    """Draws at autoreset happen on the device: nothing in a rollout reads a tensor back to the host."""
    spec = {
        "env": {"id": "sfspec/CartPole-v1", "num_envs": 8, "randomize": {"pole_mass": [0.05, 0.2], "force": [8, 12]}},
        "model": {"core": [{"gru": 8}]},
    }
    env, rollout, collect = rollout_for(spec)
    drawn = env.env.get_parameters()
    with no_host_sync(monkeypatch):
        collect()
    assert rollout.ends.sum() > 0  # episodes ended inside the rollout ...
    assert not torch.equal(env.env.params["pole_mass"], drawn["pole_mass"])  # ... and drew new physics
    assert bool(((env.env.params["force"] >= 8) & (env.env.params["force"] <= 12)).all())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.filterwarnings("ignore:Synchronization debug mode is a prototype")
@pytest.mark.parametrize("env_id", RANDOMISED)
def test_randomised_steps_do_not_synchronise_on_cuda(env_id: str) -> None:
    env = make_tensor_env(env_id, 256, device="cuda", seed=0, max_episode_steps=5)
    env.set_randomization(_ranges(env_id))
    actions = _actions(env, torch.Generator().manual_seed(0)).to("cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # catches .item(), device-to-host copies and the like
    try:
        env.reset()
        for _ in range(20):  # every row's episode ends (and draws) four times
            env.step(actions)
    finally:
        torch.cuda.set_sync_debug_mode(0)


# ---------------------------------------------------------------------------- through the CLI

BATCH = 8 * 8  # num_envs * rollout
RANDOMISED_SPEC = {
    "env": {
        "id": "sfspec/CartPole-v1",
        "num_envs": 8,
        "randomize": {"pole_half_length": [0.25, 1.0], "cart_mass": [0.5, 2.0]},
    },
    "model": {"encoder": [{"linear": 16}, "tanh"]},
    "train": {"rollout": 8, "seed": 3, "log_interval": 1, "checkpoint_interval": 1, "steps": BATCH * 3},
}


def test_resume_with_randomisation_continues_exactly(cli, tmp_path, keep_thread_count) -> None:
    """The drawn physics are part of the checkpoint: stopping and resuming equals one straight run."""
    run, straight = tmp_path / "run", tmp_path / "straight"
    assert cli("train", write_yaml(tmp_path, RANDOMISED_SPEC), "--run-dir", str(run), "--quiet").code == 0
    stopped = load_checkpoint(run)
    nominal = catalogue.env_parameters("sfspec/CartPole-v1")["pole_half_length"]
    assert not torch.equal(stopped["env"]["parameters"]["pole_half_length"], torch.full((8,), nominal).double())
    resumed = cli("train", "--resume", str(run), "--set", f"train.steps={BATCH * 6}", "--quiet")
    assert resumed.code == 0, resumed.err
    longer = {**RANDOMISED_SPEC, "train": {**RANDOMISED_SPEC["train"], "steps": BATCH * 6}}
    assert cli("train", write_yaml(tmp_path, longer, "longer.yaml"), "--run-dir", str(straight), "--quiet").code == 0
    a, b = load_checkpoint(straight), load_checkpoint(run)
    assert a["update"] == b["update"] == 6
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["env"]["parameters"][k], b["env"]["parameters"][k]) for k in a["env"]["parameters"])


def test_randomize_errors_are_spec_errors_with_positions(cli, write_spec) -> None:
    spec = write_spec(
        """
        env:
          id: sfspec/CartPole-v1
          randomize:
            pole_length: [0.4, 0.6]
            gravity: [10.5, 9.0]
            force: [5, 15]
        model: {}
        """
    )
    result = cli("validate", spec)
    assert result.code == 2 and "Traceback" not in result.err
    assert (
        f"{spec}:4:5: env.randomize.pole_length: 'sfspec/CartPole-v1' has no parameter 'pole_length' "
        "(did you mean 'pole_half_length'?); its parameters: gravity (nominal 9.8), cart_mass (nominal 1)"
    ) in result.err
    assert f"{spec}:5:14: env.randomize.gravity: reversed range [10.5, 9.0]: low must not exceed high" in result.err
    assert "env.randomize.force" not in result.err
    assert cli("train", spec, "--quiet").code == 2  # train checks the same before it starts


def test_randomize_is_refused_for_a_gymnasium_env(cli, write_spec) -> None:
    spec = write_spec("env: {id: Pendulum-v1, randomize: {gravity: [9, 11]}}\nmodel: {}\n")
    result = cli("validate", spec)
    assert result.code == 2
    assert f"{spec}:1:24: env.randomize: only tensor environments" in result.err
    assert "'Pendulum-v1' is a gymnasium environment (its tensor twin 'sfspec/Pendulum-v1' can)" in result.err


def test_randomize_of_an_env_without_parameters_says_it_has_none(cli, write_spec) -> None:
    spec = write_spec("env: {id: sfspec/Memory-v0, randomize: {delay: [4, 8]}}\nmodel: {core: [gru: 8]}\n")
    result = cli("validate", spec)
    assert (
        result.code == 2
        and "'sfspec/Memory-v0' has no parameter 'delay'; its parameters: it exposes none" in result.err
    )


def test_a_plugin_env_declares_its_parameters_on_its_class(cli, write_spec) -> None:
    class WindyCartPole(CartPoleEnv):
        parameters: ClassVar[dict[str, float]] = {**CartPoleEnv.parameters, "wind": 0.0}

    register_tensor_env("test/WindyCartPole-v0", WindyCartPole)
    try:
        good = write_spec("env: {id: test/WindyCartPole-v0, randomize: {wind: [-1, 1]}}\nmodel: {}\n", "good.yaml")
        assert cli("validate", good).code == 0
        bad = write_spec("env: {id: test/WindyCartPole-v0, randomize: {wnd: [-1, 1]}}\nmodel: {}\n", "bad.yaml")
        result = cli("validate", bad)
        assert result.code == 2 and "no parameter 'wnd' (did you mean 'wind'?)" in result.err
        env = make_env({"id": "test/WindyCartPole-v0", "num_envs": 4, "randomize": {"wind": [-1, 1]}}, 0, "cpu")
        env.reset(seed=0)
        assert env.env.params["wind"].abs().max() <= 1 and env.env.params["wind"].unique().numel() == 4
    finally:
        catalogue.remove("test/WindyCartPole-v0")


@pytest.mark.parametrize(
    "env_id, name, bounds, problem",
    [
        ("sfspec/Pendulum-v1", "mass", "[-1, 0]", "mass must be > 0"),
        ("sfspec/CartPole-v1", "pole_half_length", "[-1, -0.5]", "pole_half_length must be > 0"),
        ("sfspec/Reach-v0", "damping", "[-0.1, 1]", "damping must be >= 0"),
    ],
)
def test_a_physically_impossible_range_is_a_spec_error(cli, write_spec, env_id, name, bounds, problem) -> None:
    path = write_spec(f"env:\n  id: {env_id}\n  randomize:\n    {name}: {bounds}\nmodel: {{}}\n")
    result = cli("validate", path)
    assert result.code == 2 and ":4:" in result.err and f"{problem} (it is a physical quantity)" in result.err
    env = make_tensor_env(env_id, 2)
    with pytest.raises(ValueError, match=problem):
        env.set_randomization({name: [float(b) for b in bounds.strip("[]").split(",")]})


def test_zero_gravity_is_allowed(cli, write_spec) -> None:
    path = write_spec("env: {id: sfspec/CartPole-v1, randomize: {gravity: [0, 9.8]}}\nmodel: {}\n")
    assert cli("validate", path).code == 0


def test_reach_targets_stay_within_a_shorter_arms_reach() -> None:
    env = make_tensor_env("sfspec/Reach-v0", 256, seed=0)
    env.set_randomization({"link_length": [0.2, 0.3]})
    env.reset(seed=0)
    radius = env.state[:, 4:6].double().norm(dim=1)
    assert (radius <= 2 * env.get_parameters()["link_length"] + 1e-6).all()
