"""A bundle's inputs: exactly what the exported policy reads, and the dynamic batch axis named ``batch``.

specs/robot.yaml is asymmetric: its actor observes proprio and target_seen, its critic also the
privileged truth. A robot cannot feed privileged simulator state, so the actor-only bundle must not
take it; with ``--with-value`` the critic runs and the bundle takes the union.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml

from sfspec import pipeline
from sfspec.cli import main
from sfspec.export.errors import ExportError, ObservationError
from sfspec.export.policy import DeployPolicy
from sfspec.export.runner import PolicyRunner

ROBOT = Path(__file__).resolve().parent.parent / "specs" / "robot.yaml"
ACTOR_KEYS = ["proprio", "target_seen"]
LSTM_STATE = ["h_in", "c_in"]


@pytest.fixture(scope="module")
def actor_bundle(tmp_path_factory) -> Path:
    """specs/robot.yaml, freshly initialised, exported without the value (ONNX and torch.export)."""
    out = tmp_path_factory.mktemp("robot") / "bundle"
    assert main(["export", str(ROBOT), "--out", str(out), "--formats", "onnx,pt2"]) == 0
    return out


@pytest.fixture(scope="module")
def value_bundle(tmp_path_factory) -> Path:
    """specs/robot.yaml exported with ``--with-value`` (ONNX only)."""
    out = tmp_path_factory.mktemp("robot_value") / "bundle"
    assert main(["export", str(ROBOT), "--out", str(out), "--formats", "onnx", "--with-value"]) == 0
    return out


def _onnx_dims(bundle: Path) -> dict[str, list]:
    """Graph input and output name -> its dims (dim_param names, or sizes)."""
    graph = onnx.load(str(bundle / "policy.onnx")).graph
    values = [*graph.input, *graph.output]
    return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}


def _onnx_input_names(bundle: Path) -> list[str]:
    return [v.name for v in onnx.load(str(bundle / "policy.onnx")).graph.input]


def test_actor_only_bundle_does_not_take_the_critics_privileged_key(actor_bundle):
    expected = ACTOR_KEYS + LSTM_STATE + ["reset"]
    assert _onnx_input_names(actor_bundle) == expected
    meta = json.loads((actor_bundle / "policy.json").read_text())
    assert meta["inputs"] == expected
    assert [o["name"] for o in meta["observations"]] == ACTOR_KEYS
    golden = np.load(actor_bundle / "golden_io.npz")
    assert not [k for k in golden.files if "privileged" in k]
    golden_pt = torch.load(actor_bundle / "golden_io.pt", weights_only=True)  # what the C++ example reads
    assert golden_pt["input_names"].split("\n") == expected


def test_with_value_bundle_takes_the_union_of_what_actor_and_critic_observe(value_bundle):
    critic_state = ["critic_h_in", "critic_c_in"]
    expected = ["privileged", *ACTOR_KEYS, *LSTM_STATE, *critic_state, "reset"]  # the env's key order
    assert _onnx_input_names(value_bundle) == expected
    meta = json.loads((value_bundle / "policy.json").read_text())
    assert meta["inputs"] == expected and meta["outputs"][-1] == "value"


@pytest.mark.parametrize("which", ["actor", "value"])
def test_every_onnx_input_and_output_names_its_batch_axis_batch(request, which):
    """torch.export keeps no Dim name (its symbol is s15, say); the ONNX graph must still say ``batch``."""
    bundle = request.getfixturevalue(f"{which}_bundle")
    dims = _onnx_dims(bundle)
    assert dims and {name: d[0] for name, d in dims.items()} == {name: "batch" for name in dims}
    graph = onnx.load(str(bundle / "policy.onnx")).graph
    inner = {d.dim_param for v in graph.value_info for d in v.type.tensor_type.shape.dim if d.dim_param}
    assert all("batch" in p and not p.startswith("s") for p in inner), inner  # no leftover sNN symbol inside


def test_pt2_program_has_one_batch_symbol_shared_by_every_input(actor_bundle):
    """torch.export names its symbols itself (s0, s15, ...): one symbol, on every input's first axis."""
    program = torch.export.load(actor_bundle / "policy.pt2")  # our own bundle, just written
    user_inputs = set(program.graph_signature.user_inputs)
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in user_inputs]
    firsts = {str(n.meta["val"].shape[0]) for n in placeholders}
    assert len(user_inputs) == len(ACTOR_KEYS + LSTM_STATE) + 1 and len(firsts) == 1
    (symbol,) = firsts
    ranges = {str(k): (int(v.lower), int(v.upper)) for k, v in program.range_constraints.items()}
    assert ranges == {symbol: (1, 1 << 20)}


def test_legacy_onnx_exporter_also_names_the_batch_axis_batch(tmp_path, write_spec):
    spec = write_spec("env: {id: CartPole-v1}\nmodel: {encoder: [linear: 8, tanh]}\n")
    bundle = tmp_path / "bundle"
    assert main(["export", spec, "--out", str(bundle), "--formats", "onnx", "--legacy-onnx"]) == 0
    assert {name: d[0] for name, d in _onnx_dims(bundle).items()} == {"obs": "batch", "action": "batch"}


def test_policy_runner_takes_the_actors_keys_and_refuses_the_privileged_one(actor_bundle):
    runner = PolicyRunner(actor_bundle, batch=2)
    obs = {"proprio": np.zeros((2, 6), np.float32), "target_seen": np.zeros((2, 2), np.float32)}
    action = runner.act(obs)
    assert action.shape == (2, 2) and np.isfinite(action).all()
    with pytest.raises(ObservationError, match=r"unexpected keys \['privileged'\]"):
        runner.act({**obs, "privileged": np.zeros((2, 4), np.float32)})
    with pytest.raises(ObservationError, match=r"missing keys \['target_seen'\]"):
        runner.act({"proprio": obs["proprio"]})


def test_eval_runs_an_actor_only_bundle_in_an_env_that_also_gives_privileged(cli, actor_bundle):
    result = cli("eval", str(actor_bundle), "--episodes", "2", "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["episodes"] == 2 and np.isfinite(report["return_mean"])


def test_model_contract_says_what_actor_and_critic_observe():
    model = pipeline.compile_spec(pipeline.load(str(ROBOT)))
    assert model.observed_inputs(with_value=False) == ACTOR_KEYS
    assert model.observed_inputs(with_value=True) == ["privileged", *ACTOR_KEYS]


def _compiled(write_spec, env_id: str, model: dict):
    return pipeline.compile_spec(pipeline.load(write_spec(yaml.safe_dump({"env": {"id": env_id}, "model": model}))))


def test_an_action_mask_the_actor_needs_counts_as_observed_by_the_actor(write_spec):
    model = _compiled(write_spec, "SpaceTest/Masked-v0", {"action": {"mask": "action_mask"}})
    assert model.observed_inputs(with_value=False) == list(model.inputs)
    assert "action_mask" in model.observed_inputs(with_value=False)


def test_shared_weights_observe_one_set(write_spec):
    spec = {"share_weights": True, "actor": {"observe": ["proprio"]}, "critic": {"observe": ["proprio"]}}
    model = _compiled(write_spec, "SpaceTest/Dict-v0", spec)
    assert model.observed_inputs(with_value=False) == model.observed_inputs(with_value=True) == ["proprio"]


def test_a_custom_actor_critic_still_exports_with_every_input(cli, write_spec, tmp_path):
    spec = write_spec("env: {id: SpaceTest/Nested-v0}\nmodel: {custom: sf_actor_critic, params: {hidden: 8}}\n")
    model = pipeline.compile_spec(pipeline.load(spec))
    assert model.observed_inputs(with_value=False) == list(model.inputs)  # the flat default
    bundle = tmp_path / "bundle"
    result = cli("export", spec, "--out", str(bundle), "--formats", "onnx")
    assert result.code == 0, result.err
    assert _onnx_input_names(bundle) == [*model.inputs, "h_in", "reset"]


def test_observed_inputs_naming_an_unknown_key_is_an_export_error(write_spec):
    model = _compiled(write_spec, "SpaceTest/Dict-v0", {"actor": {"observe": ["proprio"]}})
    model.observed_inputs = lambda with_value: ["proprio", "lidar"]  # a custom contract gone wrong
    with pytest.raises(ExportError, match=r"observed_inputs\(False\) returned \['proprio', 'lidar'\]"):
        DeployPolicy(model)


@pytest.mark.slow  # the C++ build (cached between runs by cpp_replay_binary)
def test_cpp_example_replays_an_actor_only_bundle_without_the_privileged_key(tmp_path, cpp_replay_binary):
    """examples/cpp reads the input names from golden_io.pt: it feeds exactly the actor's keys."""
    bundle = tmp_path / "bundle"
    assert main(["export", str(ROBOT), "--out", str(bundle), "--formats", "torchscript"]) == 0
    run = subprocess.run([str(cpp_replay_binary), str(bundle)], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run
