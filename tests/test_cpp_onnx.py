"""examples/cpp/replay_onnx: ONNX Runtime's C++ API replays a recurrent bundle closed-loop, as a robot would.

The program reads only policy.json, policy.onnx and golden_io.npz. These tests build it once per session
(kept in pytest's cache while its sources, build script and ONNX Runtime are unchanged) and skip, naming
what to install, where no compiler or no ONNX Runtime headers are present: they install nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sfspec.cli import main

CPP = Path(__file__).resolve().parent.parent / "examples" / "cpp"
MISSING = 3  # build_onnx.sh's exit status when the headers or the library are not found
# Tiny recurrent bundles carrying every kind of state a robot loop feeds back: LSTM h/c, an observation
# history and the last action (a float action); and LSTM h/c with a history under a discrete action
# (integer outputs, compared exactly).
SPECS = {
    "robot": """\
env: {id: Pendulum-v1}
interface:
  observations: {obs: {history: 3, scale: 0.5}}
  last_action: true
  actions: {scale: 2.0}
model:
  encoder: {inputs: {obs: [linear: 8], last_action: [linear: 4]}}
  core: [lstm: {hidden: 5}]
  actor: {observe: [obs, last_action]}
""",
    "discrete": """\
env: {id: CartPole-v1}
interface: {observations: {obs: {history: 2}}}
model: {core: [lstm: {hidden: 6, layers: 2}]}
""",
}

pytestmark = pytest.mark.slow  # a C++ build (cached between runs) and an export


def _build_key() -> str:
    """What the binary depends on: its sources, the build script, the compiler and where ONNX Runtime is."""
    digest = hashlib.sha256()
    for part in (CPP / "build_onnx.sh", CPP / "replay_onnx.cpp"):
        digest.update(part.read_bytes())
    try:
        import onnxruntime

        digest.update(f"{onnxruntime.__version__} {onnxruntime.__file__}".encode())
    except ImportError:
        pass
    env = {k: v for k, v in os.environ.items() if k.startswith("ONNXRUNTIME_") or k in ("CXX", "PYTHON")}
    digest.update(repr(sorted(env.items())).encode())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def onnx_replay_binary(request, tmp_path_factory) -> Path:
    """examples/cpp/replay_onnx built with build_onnx.sh: once per session, and cached while nothing it uses changed."""
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        pytest.skip("no C++ compiler here")
    cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
    folder = Path(cache.mkdir("cpp_replay_onnx")) if cache is not None else tmp_path_factory.mktemp("cpp_onnx")
    built = folder / _build_key()
    if not (built / "replay_onnx").exists():
        partial = folder / f"{built.name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        command = ["bash", str(CPP / "build_onnx.sh"), str(partial / "replay_onnx")]
        env = {**os.environ, "PYTHON": os.environ.get("PYTHON", sys.executable)}  # this interpreter's onnxruntime
        build = subprocess.run(command, capture_output=True, text=True, env=env)
        if build.returncode == MISSING:
            pytest.skip(" ".join(build.stderr.split()))  # names the install command
        assert build.returncode == 0, build.stderr[-3000:]
        shutil.rmtree(built, ignore_errors=True)
        partial.replace(built)  # whole or absent (the program finds its library link through $ORIGIN)
    return built / "replay_onnx"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """Export a bundle of SPECS by name on first use, policy.onnx only (read-only: copy one before changing it)."""
    root, made = tmp_path_factory.mktemp("onnx_bundles"), {}

    def get(name: str) -> Path:
        if name not in made:
            (root / f"{name}.yaml").write_text(SPECS[name])
            out = root / name
            assert main(["export", str(root / f"{name}.yaml"), "--out", str(out), "--formats", "onnx"]) == 0
            made[name] = out
        return made[name]

    return get


def _replay(binary: Path, bundle: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary), str(bundle)], capture_output=True, text=True)


def _tampered(bundle: Path, tmp_path: Path, change) -> Path:
    """A copy of the bundle whose golden_io.npz went through ``change`` (a function editing the arrays in place)."""
    copy = tmp_path / "tampered"
    shutil.copytree(bundle, copy)
    with np.load(copy / "golden_io.npz", allow_pickle=False) as npz:
        golden = {key: npz[key].copy() for key in npz.files}
    change(golden)
    np.savez(copy / "golden_io.npz", **golden)
    return copy


@pytest.mark.parametrize(
    ("name", "outputs", "states"),
    [
        ("robot", "action h_out c_out obs_history_out last_action_out", 4),
        ("discrete", "action h_out c_out obs_history_out", 3),
    ],
    ids=["robot", "discrete"],
)
def test_onnx_runtime_cpp_program_replays_a_recurrent_bundle_closed_loop(
    onnx_replay_binary, bundles, name, outputs, states
):
    """The golden batch and the 50-step rollout, every state fed from the program's own previous output, match."""
    bundle = bundles(name)
    assert " ".join(json.loads((bundle / "policy.json").read_text())["outputs"]) == outputs  # the states it carries
    run = _replay(onnx_replay_binary, bundle)
    assert run.returncode == 0, run
    lines = run.stdout.splitlines()
    assert lines[0].startswith("onnxruntime ")
    assert lines[1].startswith(f"golden batch: outputs {len(outputs.split())} ") and lines[1].endswith(" ok"), lines
    assert lines[2].startswith(f"rollout (closed loop): steps 50 states {states} ") and lines[2].endswith(" ok"), lines
    assert lines[-1] == "ok"


def _nudge_last_action(golden: dict) -> None:
    golden["batch/out/last_action_out"][3, 0] += 0.01


def _flip_late_action(golden: dict) -> None:
    golden["rollout/out/action"][40, 2] = 1 - golden["rollout/out/action"][40, 2]
    golden["rollout/tie/action"][40, 2] = False  # a real disagreement, not a near-tie


@pytest.mark.parametrize(
    ("name", "change", "reported"),
    [
        ("robot", _nudge_last_action, "golden batch: last_action_out: 1 values off"),
        ("discrete", _flip_late_action, "rollout step 40: action: 1 of 4 discrete values differ"),
    ],
    ids=["float_state_in_the_golden_batch", "discrete_action_late_in_the_rollout"],
)
def test_onnx_replay_fails_on_a_tampered_golden_output(onnx_replay_binary, bundles, tmp_path, name, change, reported):
    """A wrong expectation is caught and named (exit 1), a float off by 0.01 and an integer off by one alike."""
    run = _replay(onnx_replay_binary, _tampered(bundles(name), tmp_path, change))
    assert run.returncode == 1, run
    assert reported in run.stdout and run.stdout.splitlines()[-1] == "MISMATCH", run.stdout


def test_onnx_replay_feeds_back_its_own_states_not_the_recorded_state_inputs(onnx_replay_binary, bundles, tmp_path):
    """Garbage in the rollout's recorded state inputs changes nothing: a controller never sees those."""

    def garble_states(golden: dict) -> None:
        for state in ("h_in", "c_in", "obs_history_in", "last_action_in"):
            golden[f"rollout/in/{state}"][:] = 100.0

    run = _replay(onnx_replay_binary, _tampered(bundles("robot"), tmp_path, garble_states))
    assert run.returncode == 0 and run.stdout.splitlines()[-1] == "ok", run


def _move_an_observation(golden: dict) -> None:
    golden["rollout/in/obs"][30, 1] += 0.5


def _drop_the_mid_rollout_reset(golden: dict) -> None:
    assert golden["rollout/in/reset"][25].all()  # the exporter resets every row at the middle step
    golden["rollout/in/reset"][25] = 0


@pytest.mark.parametrize(
    ("change", "first_step"),
    [(_move_an_observation, 30), (_drop_the_mid_rollout_reset, 25)],
    ids=["observation", "reset"],
)
def test_onnx_replay_feeds_observations_and_reset_from_the_golden_inputs(
    onnx_replay_binary, bundles, tmp_path, change, first_step
):
    """A changed observation or a dropped reset makes the outputs differ from that step on: both are fed."""
    run = _replay(onnx_replay_binary, _tampered(bundles("robot"), tmp_path, change))
    assert run.returncode == 1 and run.stdout.splitlines()[-1] == "MISMATCH", run
    first = next(line for line in run.stdout.splitlines() if line.startswith("  rollout step "))
    assert first.startswith(f"  rollout step {first_step}: "), run.stdout


def test_onnx_replay_refuses_a_compressed_golden_file_with_a_clear_error(onnx_replay_binary, bundles, tmp_path):
    """np.savez_compressed output is named as such (exit 1), not misread."""
    copy = tmp_path / "compressed"
    shutil.copytree(bundles("robot"), copy)
    with np.load(copy / "golden_io.npz", allow_pickle=False) as npz:
        golden = {key: npz[key] for key in npz.files}
    np.savez_compressed(copy / "golden_io.npz", **golden)
    run = _replay(onnx_replay_binary, copy)
    assert run.returncode == 1 and "is compressed (np.savez_compressed)" in run.stderr, run


def test_onnx_replay_refuses_a_contract_that_names_an_input_the_graph_lacks(onnx_replay_binary, bundles, tmp_path):
    """policy.json and policy.onnx must agree on the inputs a robot feeds; a mismatch is an error (exit 1)."""
    copy = tmp_path / "renamed"
    shutil.copytree(bundles("robot"), copy)
    meta = json.loads((copy / "policy.json").read_text())
    meta["inputs"] = ["observation" if name == "obs" else name for name in meta["inputs"]]
    (copy / "policy.json").write_text(json.dumps(meta))
    run = _replay(onnx_replay_binary, copy)
    assert run.returncode == 1 and "policy.json lists input observation, which policy.onnx lacks" in run.stderr, run


def _with_bool_reset(bundle: Path, tmp_path: Path) -> Path:
    """A copy whose graph takes ``reset`` as bool (cast to float inside), as a bundle may declare it."""
    import onnx
    from onnx import TensorProto, helper

    copy = tmp_path / "bool_reset"
    shutil.copytree(bundle, copy)
    model = onnx.load(copy / "policy.onnx")
    for node in model.graph.node:
        node.input[:] = ["reset_as_float" if name == "reset" else name for name in node.input]
    next(x for x in model.graph.input if x.name == "reset").type.tensor_type.elem_type = TensorProto.BOOL
    model.graph.node.insert(0, helper.make_node("Cast", ["reset"], ["reset_as_float"], to=TensorProto.FLOAT))
    onnx.checker.check_model(model)
    onnx.save(model, copy / "policy.onnx")
    return copy


def test_onnx_replay_feeds_reset_in_the_element_type_the_graph_declares(onnx_replay_binary, bundles, tmp_path):
    """A bool reset is fed as bool from bool golden data; golden data of another type than the graph's is an error."""
    graph_takes_bool = _with_bool_reset(bundles("robot"), tmp_path)
    mismatched = _replay(onnx_replay_binary, graph_takes_bool)
    assert mismatched.returncode == 1 and "input reset: the data is float32, the graph takes bool" in mismatched.stderr

    def bool_reset(golden: dict) -> None:
        for group in ("batch", "rollout"):
            golden[f"{group}/in/reset"] = golden[f"{group}/in/reset"].astype(bool)

    run = _replay(onnx_replay_binary, _tampered(graph_takes_bool, tmp_path / "both", bool_reset))
    assert run.returncode == 0 and run.stdout.splitlines()[-1] == "ok", run
