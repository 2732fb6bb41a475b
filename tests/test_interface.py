"""The robot interface (``interface:``): declared in the spec, trained with, compiled into the bundle.

Observations in robot units are scaled, clipped and stacked into a history; the previous action is
an input; actions leave in robot units around a default. Training (``InterfaceAdapter``) and every
artifact (``DeployPolicy``) apply the same transform, and the bundle carries the histories and the
last action as named state tensors that its ``reset`` input restarts.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import no_host_sync, rollout_for, write_yaml

from sfspec import pipeline
from sfspec.compiler.interface_config import InterfaceConfig
from sfspec.export.policy import DeployPolicy
from sfspec.export.runner import PolicyRunner
from sfspec.runtime.checkpoint import load_checkpoint
from sfspec.runtime.vec_env import make_env

ROOT = Path(__file__).resolve().parent.parent
ROBOT_SPEC = ROOT / "specs" / "reach_real.yaml"

PENDULUM = {
    "env": {"id": "sfspec/Pendulum-v1", "num_envs": 4},
    "interface": {
        "dt": 0.05,
        "observations": {
            "obs": {"scale": [1.0, 1.0, 0.125], "offset": [0.0, 0.0, 0.5], "clip": [-0.9, 0.9], "history": 3}
        },
        "last_action": True,
        "actions": {"scale": 2.0, "offset": 0.25, "clip": [-1.5, 2.0], "names": ["torque"]},
    },
    "model": {"normalize_obs": True, "encoder": [{"linear": 16}, "tanh"], "action": {"bounds": "clip"}},
    "train": {"rollout": 8, "seed": 3, "log_interval": 1, "checkpoint_interval": 1, "steps": 64 * 3},
}


def _model_and_config(tmp_path: Path, spec: dict):
    checked = pipeline.check(pipeline.load(write_yaml(tmp_path, spec)))
    model = pipeline.compile_checked(checked).eval()
    model.preprocessor.update({k: torch.randn(64, *v.shape) for k, v in model.inputs.items()})  # non-trivial stats
    return model, InterfaceConfig.from_spec(spec)


def _staggered(adapter_or_env, offsets: list[int]) -> None:
    """Make rows reach their time limit at different steps (each row's elapsed step counter)."""
    tensor_env = adapter_or_env.env
    tensor_env.elapsed_steps = torch.tensor(offsets, dtype=tensor_env.elapsed_steps.dtype)


def test_training_and_the_exported_policy_act_alike_through_staggered_resets(tmp_path) -> None:
    """The env as training sees it (network units, histories, last action) driven by the model, and the raw
    env driven by the deployable policy (robot units in and out, states fed back, reset flags) stay identical."""
    model, cfg = _model_and_config(tmp_path, PENDULUM)
    policy = DeployPolicy(model).eval()
    trained = make_env(PENDULUM["env"], 5, torch.device("cpu"), cfg)  # what PPO steps
    robot = make_env(PENDULUM["env"], 5, torch.device("cpu"))  # the plant in its own units
    obs, raw = trained.reset(seed=5), robot.reset(seed=5)
    _staggered(trained.inner, [0, 60, 130, 190])
    _staggered(robot, [0, 60, 130, 190])
    states = [torch.zeros(4, *s.shape) for s in policy.slots]
    reset = torch.ones(4)
    resets = 0
    with torch.no_grad():
        for _ in range(150):
            net_actions, _ = model.deterministic_actions(obs, model.initial_state(4))
            out = policy(raw["obs"], *states, reset)
            robot_actions, states = out[0], list(out[1:])
            expected = torch.clamp(0.25 + 2.0 * net_actions, -1.5, 2.0)
            torch.testing.assert_close(robot_actions, expected, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(states[-1], net_actions)  # last_action_out: the network's action
            a, b = trained.step(net_actions, model.layout), robot.step(robot_actions, model.layout)
            torch.testing.assert_close(a.reward, b.reward)
            reset = (b.terminated | b.truncated).to(torch.float32)
            resets += int(reset.sum())
            obs, raw = a.obs, b.obs
    assert resets == 3  # rows 1, 2, 3 restarted at different steps; row 0 never did


def test_histories_start_full_and_the_last_action_starts_at_zero(tmp_path) -> None:
    """At an episode's first step the history holds that first frame H times and the last action is zero;
    otherwise the newest frame is last and the last action is the previous network action."""
    _, cfg = _model_and_config(tmp_path, PENDULUM)
    env = make_env(PENDULUM["env"], 1, torch.device("cpu"), cfg)
    obs = env.reset(seed=1)
    frames = obs["obs"].reshape(4, 3, 3)
    assert torch.equal(frames[:, 0], frames[:, 2]) and torch.equal(frames[:, 1], frames[:, 2])
    assert torch.equal(obs["last_action"], torch.zeros(4, 1))
    assert (obs["obs"].abs() <= 0.9).all()  # clipped in network units
    _staggered(env.inner, [0, 0, 0, 199])
    actions = torch.tensor([[0.1], [-0.2], [0.3], [0.4]])
    step = env.step(actions, None)
    after = step.obs["obs"].reshape(4, 3, 3)
    assert torch.equal(after[:3, :2], frames[:3, 1:])  # pushed: the oldest frame dropped
    assert torch.equal(step.obs["last_action"][:3], actions[:3])
    assert bool(step.truncated[3]) and torch.equal(step.obs["last_action"][3], torch.zeros(1))
    assert torch.equal(after[3, 0], after[3, 2])  # a new episode: filled again
    final = step.final_obs["obs"].reshape(4, 3, 3)  # the ended episode, one step on, for bootstrapping
    assert torch.equal(final[3, :2], frames[3, 1:]) and torch.equal(step.final_obs["last_action"][3], actions[3])


def test_resume_with_an_interface_continues_exactly(cli, tmp_path, keep_thread_count) -> None:
    """The histories and the last action are in the checkpoint: stop + resume == one run."""
    run, straight = tmp_path / "run", tmp_path / "straight"
    assert cli("train", write_yaml(tmp_path, PENDULUM), "--run-dir", str(run), "--quiet").code == 0
    assert set(load_checkpoint(run)["env"]["interface"]) == {"history", "last_action", "last"}
    resumed = cli("train", "--resume", str(run), "--set", "train.steps=384", "--quiet")
    assert resumed.code == 0, resumed.err
    longer = {**PENDULUM, "train": {**PENDULUM["train"], "steps": 384}}
    assert cli("train", write_yaml(tmp_path, longer, "longer.yaml"), "--run-dir", str(straight), "--quiet").code == 0
    a, b = load_checkpoint(straight), load_checkpoint(run)
    assert a["update"] == b["update"] == 12  # 384 steps of 4 envs x 8
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_a_rollout_through_the_interface_makes_no_host_synchronisation(monkeypatch) -> None:
    """Scaling, histories and the last action are tensor work on the env's device, noise and delays included."""
    import yaml

    spec = yaml.safe_load(ROBOT_SPEC.read_text())
    spec["env"]["num_envs"] = 8
    spec["env"]["kwargs"] = {"max_episode_steps": 20}  # episodes end (and restart their histories) in the rollout
    _, rollout, collect = rollout_for(spec, steps=48)
    with no_host_sync(monkeypatch):
        collect()
    assert rollout.ends.sum() > 0


@pytest.fixture(scope="module")
def robot_bundle(tmp_path_factory) -> tuple[Path, Path]:
    """specs/reach_real.yaml trained briefly, exported in every format: (run, bundle)."""
    from sfspec.cli import main

    root = tmp_path_factory.mktemp("robot")
    run, bundle = root / "run", root / "bundle"
    small = ["--set", "env.num_envs=16", "--set", "train.steps=800"]
    assert main(["train", str(ROBOT_SPEC), "--run-dir", str(run), "--quiet", *small]) == 0
    assert main(["export", str(run), "--out", str(bundle)]) == 0
    return run, bundle


def test_the_robot_spec_trains_exports_checks_and_evaluates_alike(cli, robot_bundle) -> None:
    """specs/reach_real.yaml uses all of it; the bundle on the raw env scores what the run scores."""
    run, bundle = robot_bundle
    check = cli("check", str(bundle), "--trust", "--json")
    assert check.code == 0, check.out
    assert all(r["mismatches"] == 0 for r in json.loads(check.out).values())
    of_run = cli("eval", str(run), "--episodes", "6", "--json")
    of_bundle = cli("eval", str(bundle), "--episodes", "6", "--json")
    assert of_run.code == of_bundle.code == 0, of_bundle.err
    a, b = json.loads(of_run.out), json.loads(of_bundle.out)
    for key in ("return_mean", "return_min", "return_max"):
        assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-3), (a, b)  # float32 rounding only


def test_policy_json_is_the_robot_contract(robot_bundle) -> None:
    """Names, shapes, units transforms, histories, states with their reset rule, the control period."""
    _, bundle = robot_bundle
    meta = json.loads((bundle / "policy.json").read_text())
    assert meta["inputs"] == ["proprio", "target_seen", "proprio_history_in", "last_action_in", "reset"]
    assert meta["outputs"] == ["action", "proprio_history_out", "last_action_out"]
    proprio, target = meta["observations"]
    assert proprio["shape"] == [6] and proprio["history"] == 3 and proprio["names"][4] == "vel_shoulder"
    assert proprio["transform"] == {
        "scale": [1, 1, 1, 1, 0.2, 0.2],
        "offset": [0.0],
        "clip": {"low": [-5.0], "high": [5.0]},
        "formula": "clip((x - offset) * scale, low, high)",
    }
    assert target["names"] == ["target_x", "target_y"] and target["history"] == 1
    (action,) = meta["actions"]
    assert action["names"] == ["shoulder", "elbow"]
    assert action["low"] == [-1.0, -1.0] and action["high"] == [1.0, 1.0]  # robot units
    assert action["network"] == {"low": [-2.0, -2.0], "high": [2.0, 2.0]}
    assert action["transform"]["scale"] == [0.5] and action["transform"]["offset"] == [0.0, 0.0]
    kinds = {s["input"]: (s["kind"], s["shape"], s["on_reset"]) for s in meta["state"]}
    assert kinds["proprio_history_in"][:2] == ("history", ["batch", 3, 6])
    assert kinds["last_action_in"] == ("last_action", ["batch", 2], "zeros")
    assert meta["control"]["dt"] == 0.05 and meta["control"]["rate_hz"] == 20.0
    assert meta["trained_with"]["delay"] == {"action": [0, 1]} and "link_length" in meta["trained_with"]["randomize"]
    golden = np.load(bundle / "golden_io.npz")  # the closed-loop rollout feeds the histories back, resets included
    assert golden["rollout/in/proprio_history_in"].shape[1:] == (4, 3, 6)
    assert golden["rollout/in/reset"][25].all()


def test_policy_runner_restarts_histories_on_reset(robot_bundle) -> None:
    """PolicyRunner carries every state; after reset(rows) those rows start over as at the first step."""
    _, bundle = robot_bundle
    runner = PolicyRunner(bundle, batch=2)
    gen = np.random.default_rng(0)
    frames = [
        {
            "proprio": gen.normal(size=(2, 6)).astype(np.float32),
            "target_seen": gen.normal(size=(2, 2)).astype(np.float32),
        }
        for _ in range(3)
    ]
    first = runner.act(frames[0])
    runner.act(frames[1])
    runner.reset([1])
    again = runner.act(frames[0])
    np.testing.assert_allclose(again[1], first[1], rtol=1e-6)  # row 1 restarted: same as at the first step
    assert not np.allclose(again[0], first[0])  # row 0 carried on with its history


# ---------------------------------------------------------------------------- spec errors


@pytest.mark.parametrize(
    ("interface", "where", "message"),
    [
        ({"observations": {"obs": {"history": 0}}}, "interface.observations.obs.history", "must be >= 1"),
        ({"observations": {"obs": {"history": -2}}}, "interface.observations.obs.history", "must be >= 1"),
        ({"observations": {"obs": {"scale": [1, 2]}}}, "interface.observations.obs.scale", "2 values for 'obs'"),
        ({"observations": {"ob": {"scale": 2}}}, "interface.observations.ob", "did you mean 'obs'"),
        ({"observations": {"obs": {"clip": [1, -1]}}}, "interface.observations.obs.clip", "reversed clip"),
        ({"observations": {"obs": {"clip": [[0, 0], 1]}}}, "interface.observations.obs.clip[0]", "2 values for 'obs'"),
        ({"observations": {"obs": {"scale": 0}}}, "interface.observations.obs.scale", "without zeros"),
        ({"actions": {"scale": [1, 2]}}, "interface.actions.scale", "2 values for the action"),
        ({"actions": {"names": ["a", "b"]}}, "interface.actions.names", "give 1"),
        ({"actions": {"offsett": 1}}, "interface.actions.offsett", "did you mean 'offset'"),
    ],
)
def test_interface_mistakes_are_spec_errors_at_their_place(cli, tmp_path, interface, where, message) -> None:
    spec = {"env": {"id": "sfspec/Pendulum-v1"}, "interface": interface, "model": {}}
    result = cli("validate", write_yaml(tmp_path, spec))
    assert result.code == 2
    assert f"{where}:" in result.err and message in result.err, result.err
    assert "spec.yaml:" in result.err and "Traceback" not in result.err


def test_last_action_needs_a_box_action_and_a_reader(cli, tmp_path) -> None:
    discrete = {"env": {"id": "sfspec/CartPole-v1"}, "interface": {"last_action": True}, "model": {}}
    result = cli("validate", write_yaml(tmp_path, discrete))
    assert result.code == 2 and "need a Box action space" in result.err, result.err
    unread = {
        "env": {"id": "sfspec/Reach-v0"},
        "interface": {"last_action": True},
        "model": {"actor": {"observe": ["proprio"]}, "critic": {"observe": ["proprio", "privileged"]}},
    }
    result = cli("validate", write_yaml(tmp_path, unread, "unread.yaml"))
    assert result.code == 2 and "model.actor.observe" in result.err and "last_action" in result.err, result.err


def test_history_applies_to_vector_inputs(cli, tmp_path) -> None:
    spec = {"env": {"id": "sfspec/PixelGoal-v0"}, "interface": {"observations": {"obs": {"history": 2}}}, "model": {}}
    result = cli("validate", write_yaml(tmp_path, spec))
    assert result.code == 2 and "interface.observations.obs:" in result.err, result.err
    assert "float (Box) inputs only" in result.err or "history stacks vector" in result.err


def test_a_gymnasium_env_trains_through_the_interface_and_its_bundle_scores_alike(cli, tmp_path) -> None:
    """The interface wraps gymnasium vector envs too (host copies); the bundle on the raw env scores the same."""
    spec = {
        "env": {"id": "Pendulum-v1", "num_envs": 2},
        "interface": {
            "observations": {"obs": {"scale": [1.0, 1.0, 0.125], "history": 2}},
            "last_action": True,
            "actions": {"scale": 2.0},
        },
        "model": {"encoder": [{"linear": 16}, "tanh"]},
        "train": {"steps": 128, "rollout": 16},
    }
    run, bundle = tmp_path / "run", tmp_path / "bundle"
    assert cli("train", write_yaml(tmp_path, spec), "--run-dir", str(run), "--quiet").code == 0
    assert cli("export", str(run), "--out", str(bundle), "--formats", "onnx").code == 0
    of_run, of_bundle = (json.loads(cli("eval", str(p), "--episodes", "2", "--json").out) for p in (run, bundle))
    assert of_run["return_mean"] == pytest.approx(of_bundle["return_mean"], rel=1e-5)  # float32 rounding only


def test_video_recording_runs_one_episode_through_the_interface(tmp_path, monkeypatch) -> None:
    """``eval --video`` steps a rendering env through the same adapters (MoviePy itself is optional)."""
    import gymnasium as gym

    from sfspec.runtime.evaluate import record_video

    steps: list[int] = []

    class CountingRecorder(gym.Wrapper):  # stands in for RecordVideo: counts the recorded episode's steps
        def __init__(self, env, folder, episode_trigger, disable_logger):
            super().__init__(env)
            assert episode_trigger(0) and not episode_trigger(1)

        def step(self, action):
            steps.append(1)
            return self.env.step(action)

    monkeypatch.setattr(gym.wrappers, "RecordVideo", CountingRecorder)
    spec = {**PENDULUM, "env": {"id": "Pendulum-v1", "num_envs": 1}}
    model, _ = _model_and_config(tmp_path, spec)
    assert record_video(model, spec["env"], tmp_path / "video", 0, torch.device("cpu")) == tmp_path / "video"
    assert len(steps) == 200  # one whole episode of Pendulum-v1


def test_summary_shows_the_robot_side_of_the_interface(cli) -> None:
    result = cli("summary", str(ROBOT_SPEC), "--json")
    assert result.code == 0, result.err
    robot = json.loads(result.out)["robot"]
    assert robot["histories"] == {"proprio": 3} and robot["last_action"] and robot["dt"] == 0.05
    assert "proprio: Box(6,)" in robot["observation"]
    text = cli("summary", str(ROBOT_SPEC)).out
    assert "robot observation:" in text and "interface: proprio history 3, last action, dt 0.05 s" in text
