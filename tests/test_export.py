"""Export: bundles for a matrix of models, the parity gate, `sfspec check`, and the runtime API."""

from __future__ import annotations

import json
import subprocess
import warnings

import numpy as np
import pytest
import torch
import yaml

from sfspec import pipeline
from sfspec.export.bundle import Artifact
from sfspec.export.runner import PolicyRunner

MATRIX = {
    "mlp_discrete": ("CartPole-v1", {"normalize_obs": True, "encoder": [{"linear": 16}, "tanh"]}, []),
    "cnn_image": (
        "SpaceTest/Image-v0",
        {"encoder": [{"conv2d": {"channels": 4, "kernel": 8, "stride": 8}}, "relu", "flatten", {"linear": 16}]},
        [],
    ),
    "dict_lstm_box_value": (
        "SpaceTest/Dict-v0",
        {
            "normalize_obs": True,
            "encoder": {
                "inputs": {"camera": [{"conv2d": {"channels": 4, "kernel": 8, "stride": 8}}, "flatten"]},
                "layers": [{"linear": 16}, "elu"],
            },
            "core": [{"lstm": {"hidden": 8, "layers": 2}}],
            "actor": {"observe": ["camera", "proprio"]},
            "action": {"bounds": "tanh"},
        },
        ["--with-value"],
    ),
    "gru_multidiscrete": ("SpaceTest/MultiDiscrete-v0", {"core": [{"gru": 8}]}, []),
    "tuple_hybrid": ("SpaceTest/Mixed-v0", {"encoder": [{"linear": 16}, "tanh"], "share_weights": True}, []),
    "masked": ("SpaceTest/Masked-v0", {"action": {"mask": "action_mask"}}, ["--batch", "3"]),
}


def _train_briefly(write_spec, env_id: str, model: dict, tmp_path) -> str:
    """A spec whose normaliser has statistics (a short run), as a real export would have."""
    path = write_spec(
        yaml.safe_dump({"env": {"id": env_id, "num_envs": 2}, "model": model, "train": {"rollout": 8, "steps": 16}})
    )
    return path


HEAVY = {"dict_lstm_box_value"}  # the costliest export (CNN, 2-layer LSTM, value): in the full run only


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in MATRIX])
def test_export_matrix_passes_the_parity_gate(cli, write_spec, tmp_path, name):
    env_id, model, extra = MATRIX[name]
    spec = _train_briefly(write_spec, env_id, model, tmp_path)
    run = tmp_path / "run"
    assert cli("train", spec, "--run-dir", str(run), "--quiet").code == 0
    bundle = tmp_path / "bundle"
    result = cli("export", str(run), "--out", str(bundle), *extra)
    assert result.code == 0, result.err
    meta = json.loads((bundle / "policy.json").read_text())
    for file in ("policy.onnx", "policy.pt", "policy.pt2", "golden_io.npz"):
        assert (bundle / file).is_file(), file
    assert meta["deterministic"] is True and meta["opset"] == 18
    assert meta["exporter"].startswith("torch.onnx dynamo")
    observed = pipeline.compile_spec(pipeline.load(spec)).observed_inputs("--with-value" in extra)
    assert [o["name"] for o in meta["observations"]] == observed
    assert all(v <= 1e-4 for v in meta["parity_worst_abs_error"].values())
    check = cli("check", str(bundle), "--json", "--trust")  # our own bundle: run the TorchScript and pt2 too
    assert check.code == 0, check.out
    report = json.loads(check.out)
    assert set(report) == {"onnx", "torchscript", "pt2"}
    assert all(r["mismatches"] == 0 and r["latency_median_ms"] > 0 for r in report.values())
    import onnx

    props = {p.key: p.value for p in onnx.load(str(bundle / "policy.onnx")).metadata_props}
    assert props["weights_sha256"] == meta["weights_sha256"] and json.loads(props["outputs"]) == meta["outputs"]


def test_recurrent_bundle_names_state_and_resets(cli, write_spec, tmp_path):
    spec = write_spec(
        "env: {id: Pendulum-v1}\nmodel:\n  normalize_obs: true\n  core: [gru: {hidden: 6, layers: 2}]\n"
        "  action: {bounds: clip}\n"
    )
    bundle = tmp_path / "bundle"
    assert cli("export", spec, "--out", str(bundle), "--formats", "onnx,torchscript").code == 0
    meta = json.loads((bundle / "policy.json").read_text())
    assert meta["inputs"] == ["obs", "h_in", "reset"] and meta["outputs"] == ["action", "h_out"]
    assert meta["state"] == [
        {
            "input": "h_in",
            "output": "h_out",
            "shape": ["batch", 2, 6],
            "dtype": "float32",
            "kind": "recurrent",
            "initial": "zeros",
            "on_reset": "zeros",
        }
    ]
    golden = np.load(bundle / "golden_io.npz")
    resets = golden["rollout/in/reset"]
    assert resets.shape[0] == 50 and resets[25].all() and not resets[24].any()

    # the runtime API holds the memory: its actions follow the eager model stepping the same inputs
    from sfspec.runtime.train import seed_everything

    seed_everything(0)  # the bare spec was exported with its (default) train.seed
    model = pipeline.compile_spec(pipeline.load(spec))
    torch.manual_seed(0)
    for backend in ("onnx", "torchscript"):
        runner = PolicyRunner(bundle, backend, batch=3)
        state = model.initial_state(3)
        obs_seq = torch.randn(6, 3, 3)
        for t in range(6):
            if t == 4:
                runner.reset([1])
                state[1] = 0.0
            expected, state = model.deterministic_actions({"obs": obs_seq[t]}, state)
            got = runner.act(obs_seq[t].numpy())
            np.testing.assert_allclose(got, expected.detach().numpy(), atol=1e-5, rtol=1e-4)
            assert np.all(np.abs(got) <= 2.0)  # already in Pendulum's bounds


DEPLOY_MODELS = {
    "lstm_2_layers_separate_critic": {"normalize_obs": True, "core": [{"lstm": {"hidden": 6, "layers": 2}}]},
    "gru_between_linears_shared": {
        "core": [{"linear": 8}, "tanh", {"gru": 5}, {"gru": {"hidden": 4, "layers": 2}}],
        "share_weights": True,
    },
    "asymmetric_critic_memory_only": {"actor": {"core": []}, "critic": {"core": [{"gru": 7}]}},
    "custom_core_flat_state": {"core": {"custom": "sf_core", "params": {"size": 9}}},
}


@pytest.mark.parametrize("name", list(DEPLOY_MODELS))
def test_deploy_policy_computes_what_the_model_computes(name):
    """Actions, next state and value of the exported module against the trained model, resets included."""
    from gymnasium import spaces

    from sfspec.compiler.build import compile_model
    from sfspec.export.policy import DeployPolicy

    torch.manual_seed(0)
    obs_space, act_space = spaces.Box(-5.0, 5.0, (4,), np.float32), spaces.Box(-1.0, 1.0, (2,), np.float32)
    model = compile_model({"model": DEPLOY_MODELS[name]}, obs_space, act_space)
    model.preprocessor.update({"obs": torch.randn(100, 4) * 2.0 + 1.0})
    policy = DeployPolicy(model, with_value=True).eval()
    assert [s.start for s in policy.model_slots] == sorted(s.start for s in policy.model_slots)
    state = model.initial_state(3)
    named = [torch.zeros(3, s.layers, s.hidden) for s in policy.model_slots]
    with torch.no_grad():
        for t in range(5):
            obs = torch.randn(3, 4) * 3.0
            reset = torch.tensor([1.0, 0.0, 1.0 if t == 3 else 0.0])
            state = state * (1.0 - reset).unsqueeze(-1)
            expected, next_state = model.deterministic_actions({"obs": obs}, state)
            value = model.values({"obs": obs}, state)
            out = policy(obs, *named, reset) if policy.slots else policy(obs)
            torch.testing.assert_close(out[0], expected)
            torch.testing.assert_close(out[-1], value)
            named = list(out[1:-1])
            flat = torch.cat([n.reshape(3, -1) for n in named], 1) if named else next_state
            torch.testing.assert_close(flat, next_state)
            state = next_state


def test_bundle_evaluates_in_the_environment_like_the_checkpoint(cli, tiny_run, tiny_bundle):
    from_checkpoint = json.loads(cli("eval", str(tiny_run), "--episodes", "4", "--json").out)
    from_bundle = json.loads(cli("eval", str(tiny_bundle), "--episodes", "4", "--json").out)
    assert from_bundle == from_checkpoint


def test_parity_gate_refuses_a_mismatching_artifact(cli, write_spec, tmp_path, monkeypatch):
    real_call = Artifact.__call__

    def off_by_a_little(self, inputs):
        return [o + 1e-3 if np.issubdtype(o.dtype, np.floating) else o for o in real_call(self, inputs)]

    monkeypatch.setattr(Artifact, "__call__", off_by_a_little)
    spec = write_spec("env: {id: Pendulum-v1}\nmodel: {encoder: [linear: 8]}\n")
    result = cli("export", spec, "--out", str(tmp_path / "bundle"), "--formats", "torchscript")
    assert result.code == 1
    assert "parity check failed" in result.err and "policy.pt" in result.err and "Traceback" not in result.err
    assert not (tmp_path / "bundle" / "policy.json").exists()  # no bundle is declared good


def test_export_errors_are_clear(cli, write_spec, tmp_path):
    spec = write_spec("env: {id: CartPole-v1}\nmodel: {}\n")
    result = cli("export", spec, "--formats", "onnx,tflite")
    assert result.code == 2 and "unknown format 'tflite'" in result.err
    missing = cli("export", str(tmp_path / "no_run"))
    assert missing.code == 1 and "no checkpoint here" in missing.err


@pytest.mark.slow  # the C++ build (cached between runs by cpp_replay_binary)
def test_cpp_libtorch_program_replays_the_golden_inputs(cli, write_spec, tmp_path, cpp_replay_binary):
    """examples/cpp builds against the torch wheel's LibTorch and reproduces the bundle's outputs."""
    binary = cpp_replay_binary
    spec = write_spec("env: {id: Pendulum-v1}\nmodel: {normalize_obs: true, core: [lstm: {hidden: 6, layers: 2}]}\n")
    bundle = tmp_path / "bundle"
    assert cli("export", spec, "--out", str(bundle), "--formats", "torchscript").code == 0
    run = subprocess.run([str(binary), str(bundle)], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.startswith("outputs 3 ") and run.stdout.strip().endswith("ok"), run
    golden = torch.load(bundle / "golden_io.pt", weights_only=True)
    golden["batch/out/action"] = golden["batch/out/action"] + 0.01  # a wrong expectation must be caught
    torch.save(golden, bundle / "golden_io.pt")
    tampered = subprocess.run([str(binary), str(bundle)], capture_output=True, text=True)
    assert tampered.returncode == 1 and "MISMATCH" in tampered.stdout


class _ActionsOf(torch.nn.Module):
    """The model's public deterministic_actions as a traceable forward(*observations, state)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.keys = model, list(model.inputs)

    def forward(self, *inputs):
        return self.model.deterministic_actions(dict(zip(self.keys, inputs[:-1])), inputs[-1])


TRACED_MODELS = {
    "tuple_obs_with_discrete_offsets_and_a_hybrid_action": ("SpaceTest/Mixed-v0", {"encoder": [{"linear": 8}]}),
    "channels_last_image_and_tanh_bounds": (
        "SpaceTest/Dict-v0",
        {"encoder": {"inputs": {"camera": ["flatten", {"linear": 8}]}}, "action": {"bounds": "tanh"}},
    ),
    "box_action_with_uniform_clip_bounds": ("Pendulum-v1", {"normalize_obs": True}),
}


@pytest.mark.parametrize("name", list(TRACED_MODELS))
def test_tracing_the_compiled_model_raises_no_tracer_warning(name):
    """Preprocessing, input checks and to_env decide from build-time facts, not from traced tensor shapes."""
    import gymnasium as gym

    from sfspec.compiler.build import compile_model

    env_id, model_spec = TRACED_MODELS[name]
    env = gym.make(env_id)
    model = compile_model({"model": model_spec}, env.observation_space, env.action_space).eval()
    obs = [
        torch.as_tensor(np.stack([info.space.sample() for _ in range(3)])) for info in model.inputs.values()
    ]
    example = (*obs, model.initial_state(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit's own deprecation notice
        warnings.simplefilter("error", torch.jit.TracerWarning)
        traced = torch.jit.trace(_ActionsOf(model), example, check_trace=False)
    torch.testing.assert_close(traced(*example), _ActionsOf(model)(*example))
