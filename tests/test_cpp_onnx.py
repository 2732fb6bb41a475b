"""examples/cpp/replay_onnx: ONNX Runtime's C++ API replays a recurrent bundle closed-loop, as a robot would.

The program reads only policy.json, policy.onnx and golden_io.npz. These tests build it once per session
(kept in pytest's cache while its sources, build script and ONNX Runtime are unchanged) and skip, naming
what to install, where no compiler or no ONNX Runtime headers are present: they install nothing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from sfspec.cli import main

CPP = Path(__file__).resolve().parent.parent / "examples" / "cpp"
MISSING = 3  # build_onnx.sh's exit status when the headers or the library are not found
# A recurrent policy with a discrete action: float states carried step to step, integer actions compared exactly.
SPEC = "env: {id: CartPole-v1}\nmodel: {core: [lstm: {hidden: 6, layers: 2}]}\n"

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
        build = subprocess.run(["bash", str(CPP / "build_onnx.sh"), str(partial / "replay_onnx")], capture_output=True, text=True)
        if build.returncode == MISSING:
            pytest.skip(" ".join(build.stderr.split()))  # names the install command
        assert build.returncode == 0, build.stderr[-3000:]
        shutil.rmtree(built, ignore_errors=True)
        partial.replace(built)  # whole or absent (the program finds its library link through $ORIGIN)
    return built / "replay_onnx"


@pytest.fixture(scope="module")
def recurrent_bundle(tmp_path_factory) -> Path:
    """A tiny LSTM CartPole bundle with policy.onnx only (read-only: copy it before changing it)."""
    root = tmp_path_factory.mktemp("onnx_bundle")
    (root / "spec.yaml").write_text(SPEC)
    assert main(["export", str(root / "spec.yaml"), "--out", str(root / "bundle"), "--formats", "onnx"]) == 0
    return root / "bundle"


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


def test_onnx_runtime_cpp_program_replays_a_recurrent_bundle_closed_loop(onnx_replay_binary, recurrent_bundle):
    """The golden batch and the 50-step rollout, each state fed from the program's own previous output, match."""
    run = _replay(onnx_replay_binary, recurrent_bundle)
    assert run.returncode == 0, run
    lines = run.stdout.splitlines()
    assert lines[0].startswith("onnxruntime ")
    assert lines[1].startswith("golden batch: outputs 3 ") and lines[1].endswith(" ok"), run.stdout
    assert lines[2].startswith("rollout (closed loop): steps 50 states 2 ") and lines[2].endswith(" ok"), run.stdout
    assert lines[-1] == "ok"


def _nudge_batch_state(golden: dict) -> None:
    golden["batch/out/c_out"][3, 1, 2] += 0.01


def _flip_late_action(golden: dict) -> None:
    golden["rollout/out/action"][40, 2] = 1 - golden["rollout/out/action"][40, 2]
    golden["rollout/tie/action"][40, 2] = False  # a real disagreement, not a near-tie


@pytest.mark.parametrize(
    ("change", "reported"),
    [
        (_nudge_batch_state, "golden batch: c_out: 1 values off"),
        (_flip_late_action, "rollout step 40: action: 1 of 4 discrete values differ"),
    ],
    ids=["continuous_state_in_the_golden_batch", "discrete_action_late_in_the_rollout"],
)
def test_onnx_replay_fails_on_a_tampered_golden_output(onnx_replay_binary, recurrent_bundle, tmp_path, change, reported):
    """A wrong expectation is caught and named (exit 1), a float off by 0.01 and an integer off by one alike."""
    run = _replay(onnx_replay_binary, _tampered(recurrent_bundle, tmp_path, change))
    assert run.returncode == 1, run
    assert reported in run.stdout and run.stdout.splitlines()[-1] == "MISMATCH", run.stdout


def test_onnx_replay_feeds_back_its_own_states_not_the_recorded_state_inputs(
    onnx_replay_binary, recurrent_bundle, tmp_path
):
    """Garbage in the rollout's recorded h_in/c_in changes nothing: a controller never sees those."""

    def garble_states(golden: dict) -> None:
        for name in ("h_in", "c_in"):
            golden[f"rollout/in/{name}"][:] = 100.0

    run = _replay(onnx_replay_binary, _tampered(recurrent_bundle, tmp_path, garble_states))
    assert run.returncode == 0 and run.stdout.splitlines()[-1] == "ok", run


def _move_an_observation(golden: dict) -> None:
    golden["rollout/in/obs"][30, 1] += 0.5


def _drop_the_mid_rollout_reset(golden: dict) -> None:
    assert golden["rollout/in/reset"][25].all()  # the exporter resets every row at the middle step
    golden["rollout/in/reset"][25] = 0.0


@pytest.mark.parametrize(
    ("change", "first_step"),
    [(_move_an_observation, 30), (_drop_the_mid_rollout_reset, 25)],
    ids=["observation", "reset"],
)
def test_onnx_replay_feeds_observations_and_reset_from_the_golden_inputs(
    onnx_replay_binary, recurrent_bundle, tmp_path, change, first_step
):
    """A changed observation or a dropped reset makes the outputs differ from that step on: both are fed."""
    run = _replay(onnx_replay_binary, _tampered(recurrent_bundle, tmp_path, change))
    assert run.returncode == 1 and run.stdout.splitlines()[-1] == "MISMATCH", run
    first = next(line for line in run.stdout.splitlines() if line.startswith("  rollout step "))
    assert first.startswith(f"  rollout step {first_step}: "), run.stdout


def test_onnx_replay_refuses_a_compressed_golden_file_with_a_clear_error(onnx_replay_binary, recurrent_bundle, tmp_path):
    """np.savez_compressed output is named as such (exit 1), not misread."""
    copy = tmp_path / "compressed"
    shutil.copytree(recurrent_bundle, copy)
    with np.load(copy / "golden_io.npz", allow_pickle=False) as npz:
        golden = {key: npz[key] for key in npz.files}
    np.savez_compressed(copy / "golden_io.npz", **golden)
    run = _replay(onnx_replay_binary, copy)
    assert run.returncode == 1 and "is compressed (np.savez_compressed)" in run.stderr, run


def test_onnx_replay_refuses_a_contract_that_names_an_input_the_graph_lacks(
    onnx_replay_binary, recurrent_bundle, tmp_path
):
    """policy.json and policy.onnx must agree on the inputs a robot feeds; a mismatch is an error (exit 1)."""
    import json

    copy = tmp_path / "renamed"
    shutil.copytree(recurrent_bundle, copy)
    meta = json.loads((copy / "policy.json").read_text())
    meta["inputs"] = ["observation" if name == "obs" else name for name in meta["inputs"]]
    (copy / "policy.json").write_text(json.dumps(meta))
    run = _replay(onnx_replay_binary, copy)
    assert run.returncode == 1 and "policy.json lists input observation, which policy.onnx lacks" in run.stderr, run
