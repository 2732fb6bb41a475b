"""Training-time robustness: ``env.noise`` and ``env.delay`` between the environment and the policy."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml
from conftest import no_host_sync, rollout_for, write_yaml
from gymnasium import spaces

from sfspec.compiler.spaces import action_layout
from sfspec.envs import TensorEnv, register_tensor_env
from sfspec.runtime.checkpoint import load_checkpoint
from sfspec.runtime.robustness import RobustnessAdapter, default_action
from sfspec.runtime.vec_env import make_env

CPU = torch.device("cpu")


class EchoEnv(TensorEnv):
    """obs = the last action the env executed, repeated 3 times (0 after a reset); never ends before its limit."""

    env_id = "sfspec/Echo-v0"
    state_dim = 1
    default_max_episode_steps = 1000

    def __init__(self, num_envs, device="cpu", dtype=torch.float32, seed=None, max_episode_steps=None):
        self.single_observation_space = spaces.Box(-np.inf, np.inf, (3,), np.float32)
        self.single_action_space = spaces.Box(-100.0, 100.0, (1,), np.float32)
        super().__init__(num_envs, device, dtype, seed, max_episode_steps)

    def _initial_state(self):
        return torch.zeros(self.num_envs, 1, dtype=self.dtype, device=self.device)

    def _dynamics(self, state, actions):
        zeros = torch.zeros(self.num_envs, dtype=self.dtype, device=self.device)
        return actions.reshape(self.num_envs, 1).to(self.dtype), zeros, zeros.bool()

    def _observe(self, state):
        return state.expand(-1, 3).to(torch.float32).clone()


register_tensor_env("sfspec/Echo-v0", EchoEnv)


def _counter(num_envs: int, limit: int, **robust) -> RobustnessAdapter:
    """The test plugin's counter (obs = steps into the episode) with noise or delays."""
    cfg = {"id": "sfspec/Counter-v0", "num_envs": num_envs, "kwargs": {"max_episode_steps": limit}, **robust}
    return make_env(cfg, 0, CPU)


def _discrete_step(env, action: int = 0):
    return env.step(torch.full((env.num_envs, 1), float(action)), action_layout(env.action_space))


# ---------------------------------------------------------------------------- delays


def test_a_delayed_observation_is_the_true_one_from_d_steps_before() -> None:
    env = _counter(2, 6, delay={"observation": 2})
    assert isinstance(env, RobustnessAdapter)
    seen = [env.reset(seed=0)["obs"][:, 0]]
    finals = []
    for _ in range(13):
        step = _discrete_step(env)
        seen.append(step.obs["obs"][:, 0])
        finals.append(step.final_obs["obs"][:, 0])
    true = [t % 6 for t in range(14)]  # the counter's own observation: 6 steps, then a new episode at 0
    starts = [t - true[t] for t in range(14)]
    expected = [max(starts[t], t - 2) - starts[t] for t in range(14)]  # d steps back, never before the start
    assert [int(s[0]) for s in seen] == expected and torch.equal(seen[-1], seen[-1][:1].expand(2))
    # at the time limit the bootstrap observation is delayed too: step 6 reached 6, the policy would see 4
    assert float(finals[5][0]) == 4.0


def test_the_env_executes_the_action_chosen_d_steps_before() -> None:
    env = make_env({"id": "sfspec/Echo-v0", "num_envs": 3, "delay": {"action": 2}}, 0, CPU)
    layout = action_layout(env.action_space)
    env.reset(seed=0)
    executed = []
    for t in range(1, 7):
        executed.append(env.step(torch.full((3, 1), float(t)), layout).obs["obs"][0, 0].item())
    assert executed == [0.0, 0.0, 1.0, 2.0, 3.0, 4.0]  # two pending zeros, then each action two steps late


def test_pending_actions_at_an_episode_start_are_zero_or_the_boxs_centre_or_the_first_action() -> None:
    assert default_action(action_layout(spaces.Box(-1.0, 1.0, (2,)))) == [0.0, 0.0]
    assert default_action(action_layout(spaces.Box(1.0, 3.0, (1,)))) == [2.0]  # zero is out of bounds
    assert default_action(action_layout(spaces.Discrete(4))) == [0.0]
    assert default_action(action_layout(spaces.Discrete(4, start=1))) == [1.0]


def test_per_episode_delays_stay_in_their_range_and_change_only_at_resets() -> None:
    limit = 4
    env = _counter(64, limit, delay={"observation": [0, 3]})
    obs = env.reset(seed=1)["obs"][:, 0]
    episode = [[obs]]
    drawn = []
    for _ in range(4 * limit):
        step = _discrete_step(env)
        episode[-1].append(step.obs["obs"][:, 0])
        if bool(step.truncated[0]):  # every row ends together (the counter's time limit)
            delay = limit - step.final_obs["obs"][:, 0]  # the final true observation is `limit`
            assert ((delay >= 0) & (delay <= 3)).all()
            seen = torch.stack(episode[-1][:-1])  # the episode's observations, its final one aside
            steps = torch.arange(limit).unsqueeze(1)
            assert torch.equal(seen, (steps - delay).clamp(min=0))  # one delay for the whole episode
            drawn.append(delay)
            episode.append([step.obs["obs"][:, 0]])
    delays = torch.stack(drawn)
    assert set(delays.flatten().tolist()) == {0.0, 1.0, 2.0, 3.0}
    assert not all(torch.equal(delays[0], d) for d in delays[1:])  # redrawn at the resets


# ---------------------------------------------------------------------------- noise


@pytest.mark.parametrize("kind", ["gaussian", "uniform"])
def test_observation_noise_has_zero_mean_and_the_std_asked_for_per_component(kind: str) -> None:
    stds = [0.1, 0.5, 2.0]
    env = make_env({"id": "sfspec/Echo-v0", "num_envs": 4096, "noise": {"obs": {"type": kind, "std": stds}}}, 0, CPU)
    layout = action_layout(env.action_space)
    samples = [env.reset(seed=0)["obs"]]
    samples += [env.step(torch.zeros(4096, 1), layout).obs["obs"] for _ in range(4)]  # the true obs stays 0
    noise = torch.cat(samples).double()
    n = noise.shape[0]
    for component, std in enumerate(stds):
        column = noise[:, component]
        assert abs(float(column.mean())) < 4 * std / math.sqrt(n)
        assert abs(float(column.std()) / std - 1) < 0.03
        if kind == "uniform":
            assert float(column.abs().max()) <= std * math.sqrt(3) + 1e-6


def test_one_std_is_broadcast_and_noise_is_fresh_each_step() -> None:
    env = make_env({"id": "sfspec/Echo-v0", "num_envs": 2000, "noise": {"obs": {"std": 0.3}}}, 0, CPU)
    first = env.reset(seed=0)["obs"]
    second = env.step(torch.zeros(2000, 1), action_layout(env.action_space)).obs["obs"]
    assert not torch.equal(first, second)
    assert all(abs(float(first[:, c].std()) / 0.3 - 1) < 0.1 for c in range(3))


# ---------------------------------------------------------------------------- training


def test_rollout_with_noise_and_delays_makes_no_host_synchronisation(monkeypatch) -> None:
    spec = {
        "env": {
            "id": "sfspec/CartPole-v1",
            "num_envs": 8,
            "noise": {"obs": {"type": "uniform", "std": [0.01, 0.1, 0.01, 0.1]}},
            "delay": {"observation": [0, 2], "action": [1, 2]},
        },
        "model": {"core": [{"gru": 8}]},
    }
    _, rollout, collect = rollout_for(spec)
    with no_host_sync(monkeypatch):
        collect()
    assert rollout.ends.sum() > 0  # episodes ended (and the delays were redrawn) inside the rollout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.filterwarnings("ignore:Synchronization debug mode is a prototype")
def test_noisy_delayed_steps_do_not_synchronise_on_cuda() -> None:
    cfg = {
        "id": "sfspec/CartPole-v1",
        "num_envs": 256,
        "kwargs": {"max_episode_steps": 5},
        "noise": {"obs": {"type": "uniform", "std": 0.1}},
        "delay": {"observation": [0, 3], "action": [1, 2]},
    }
    env = make_env(cfg, 0, torch.device("cuda"))
    layout = action_layout(env.action_space)
    actions = torch.randint(0, 2, (256, 1), device="cuda").float()
    env.reset(seed=0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # catches .item(), device-to-host copies and the like
    try:
        for _ in range(20):  # every row's episode ends (and redraws its delays) four times
            step = env.step(actions, layout)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert step.obs["obs"].device.type == "cuda"


def test_a_gymnasium_env_trains_with_noise_and_delays(cli, tmp_path) -> None:
    spec = {
        "env": {
            "id": "CartPole-v1",
            "num_envs": 2,
            "vectorization": "sync",
            "noise": {"obs": {"std": 0.05}},
            "delay": {"observation": [0, 1], "action": 1},
        },
        "model": {"encoder": [{"linear": 8}, "tanh"]},
        "train": {"rollout": 32, "steps": 256, "log_interval": 1},
    }
    run = tmp_path / "run"
    result = cli("train", write_yaml(tmp_path, spec), "--run-dir", str(run), "--quiet")
    assert result.code == 0, result.err
    assert load_checkpoint(run)["update"] == 4


ROBUST_SPEC = {
    "env": {
        "id": "sfspec/CartPole-v1",
        "num_envs": 8,
        "noise": {"obs": {"std": [0.01, 0.1, 0.01, 0.1]}},
        "delay": {"observation": [0, 2], "action": [0, 1]},
    },
    "model": {"encoder": [{"linear": 16}, "tanh"]},
    "train": {"rollout": 8, "seed": 3, "log_interval": 1, "checkpoint_interval": 1, "steps": 64 * 3},
}


def test_resume_with_noise_and_delays_continues_exactly(cli, tmp_path, keep_thread_count) -> None:
    """Buffers, drawn delays and the noise generator are in the checkpoint: stop + resume == one run."""
    run, straight = tmp_path / "run", tmp_path / "straight"
    assert cli("train", write_yaml(tmp_path, ROBUST_SPEC), "--run-dir", str(run), "--quiet").code == 0
    assert "robustness" in load_checkpoint(run)["env"]
    resumed = cli("train", "--resume", str(run), "--set", "train.steps=384", "--quiet")
    assert resumed.code == 0, resumed.err
    longer = {**ROBUST_SPEC, "train": {**ROBUST_SPEC["train"], "steps": 384}}
    assert cli("train", write_yaml(tmp_path, longer, "longer.yaml"), "--run-dir", str(straight), "--quiet").code == 0
    a, b = load_checkpoint(straight), load_checkpoint(run)
    assert a["update"] == b["update"] == 6
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    ra, rb = a["env"]["robustness"], b["env"]["robustness"]
    assert all(torch.equal(ra[k], rb[k]) for k in ("generator", "observation_delay", "action_delay"))


def test_an_exported_bundle_carries_no_noise_or_delay(cli, tmp_path, tiny_bundle) -> None:
    """A run trained with noise and delays exports the same inputs as one without; the parity gate passes."""
    spec = yaml.safe_load((tiny_bundle.parent / "spec.yaml").read_text())
    spec["env"] = {**spec["env"], "noise": {"obs": {"std": 0.05}}, "delay": {"observation": 1, "action": 1}}
    run, bundle = tmp_path / "run", tmp_path / "bundle"
    assert cli("train", write_yaml(tmp_path, spec), "--run-dir", str(run), "--quiet").code == 0
    result = cli("export", str(run), "--out", str(bundle), "--formats", "torchscript")
    assert result.code == 0, result.err
    meta = json.loads((bundle / "policy.json").read_text())
    plain = json.loads((tiny_bundle / "policy.json").read_text())
    assert meta["inputs"] == plain["inputs"]
    assert "noise" not in json.dumps(meta["inputs"]) and "delay" not in json.dumps(meta["inputs"])
    assert all(v <= 1e-4 for v in meta["parity_worst_abs_error"].values())
    # What training did to the plant is recorded for traceability (the bundle never applies it).
    assert meta["trained_with"] == {"randomize": {}, "noise": {"obs": {"std": 0.05}}, "delay": spec["env"]["delay"]}
    assert plain["trained_with"] == {"randomize": {}, "noise": {}, "delay": {}}


# ---------------------------------------------------------------------------- spec errors


def test_noise_and_delay_errors_are_spec_errors_with_positions(cli, write_spec) -> None:
    spec = write_spec(
        """
        env:
          id: sfspec/Pendulum-v1
          noise:
            ob: {std: 0.1}
          delay:
            observation: [3, 1]
            action: 200
        model: {}
        """
    )
    result = cli("validate", spec)
    assert result.code == 2 and "Traceback" not in result.err
    assert f"{spec}:4:5: env.noise.ob: no observation input 'ob' (did you mean 'obs'?); the inputs: obs" in result.err
    assert (
        f"{spec}:6:18: env.delay.observation: reversed range [3, 1]: low must not exceed high (did you mean [1, 3]?)"
    ) in result.err
    assert f"{spec}:7:13: env.delay.action: a delay of 200 steps is not shorter than an episode (200" in result.err
    assert cli("train", spec, "--quiet").code == 2


def test_noise_on_a_discrete_input_and_a_misspelt_nested_input_are_refused(cli, write_spec) -> None:
    spec = write_spec(
        """
        env:
          id: SpaceTest/Nested-v0
          noise:
            robot.cell: {std: 0.1}
            robot.joint: {std: 0.1}
            goal: {std: [0.1, 0.1]}
        model: {}
        """
    )
    result = cli("validate", spec)
    assert result.code == 2
    assert f"{spec}:4:5: env.noise.robot.cell: 'robot.cell' is Discrete(7), a discrete input" in result.err
    assert "env.noise.robot.joint: no observation input 'robot.joint' (did you mean 'robot.joints'?)" in result.err
    assert f"{spec}:6:17: env.noise.goal.std: 2 std values for 'goal' of shape (4,)" in result.err


def test_noise_on_an_image_input_of_integers_is_refused(cli, write_spec) -> None:
    spec = write_spec("env: {id: sfspec/PixelGoal-v0, noise: {obs: {std: 1}}}\nmodel: {}\n")
    result = cli("validate", spec)
    assert result.code == 2 and "'obs' is Box(24, 24, 3) uint8, a discrete input" in result.err


@pytest.mark.parametrize(
    ("fragment", "message"),
    [
        ("noise: {obs: {std: -0.1}}", "env.noise.obs.std: must be >= 0"),
        ("noise: {obs: {type: normal, std: 0.1}}", "env.noise.obs.type"),
        ("delay: {observation: -1}", "env.delay.observation: must be >= 0"),
        ("delay: {actions: 1}", "unknown key 'actions' (did you mean 'action'?)"),
        ("delay: {action: 500}", "a delay of 500 steps is not shorter than an episode (500 steps at most)"),
        ("kwargs: {max_episode_steps: 5}, delay: {observation: [1, 5]}", "not shorter than an episode (5 steps"),
    ],
)
def test_malformed_noise_and_delays_are_spec_errors(cli, write_spec, fragment: str, message: str) -> None:
    spec = write_spec(f"env: {{id: CartPole-v1, {fragment}}}\nmodel: {{}}\n")
    result = cli("validate", spec)
    assert result.code == 2 and message in result.err and f"{spec}:1:" in result.err, result.err


def test_a_sound_noise_and_delay_section_validates(cli, write_spec) -> None:
    spec = write_spec(
        """
        env:
          id: sfspec/Pendulum-v1
          noise: {obs: {type: uniform, std: [0.01, 0.01, 0.1]}}
          delay: {observation: 1, action: [0, 2]}
        model: {}
        """
    )
    assert cli("validate", spec).code == 0
