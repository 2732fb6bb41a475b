"""Bundles that cannot run code, lie, or be half-written: every attack or fault file is built here."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import pickle
import shutil
import stat
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from sfspec import pipeline
from sfspec.export.bundle import export_bundle
from sfspec.export.errors import BundleError, ExportError, ObservationError
from sfspec.export.runner import PolicyRunner

# ---------------------------------------------------------------- helpers: what an attacker (or an accident) does


def _copy(bundle: Path, tmp_path: Path, name: str = "bundle") -> Path:
    target = tmp_path / name
    shutil.copytree(bundle, target)
    return target


def _meta(bundle: Path) -> dict:
    return json.loads((bundle / "policy.json").read_text())


def _write_meta(bundle: Path, meta: dict) -> None:
    (bundle / "policy.json").write_text(json.dumps(meta))


def _rehash(bundle: Path) -> None:
    """Rewrite policy.json's checksums to match the files as they are now."""
    meta = _meta(bundle)
    for name in meta["checksums"]:
        data = (bundle / name).read_bytes()
        meta["checksums"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    _write_meta(bundle, meta)


def _regenerate_golden(bundle: Path) -> None:
    """Replace the golden outputs by what the bundle's ONNX file computes (as if it were right)."""
    import onnxruntime as ort

    meta = _meta(bundle)
    session = ort.InferenceSession(str(bundle / "policy.onnx"), providers=["CPUExecutionProvider"])
    golden = dict(np.load(bundle / "golden_io.npz"))
    feed = {n: golden[f"batch/in/{n}"] for n in meta["inputs"]}
    for name, value in zip(meta["outputs"], session.run(None, feed)):
        golden[f"batch/out/{name}"] = value
    np.savez(bundle / "golden_io.npz", **golden)


def _scale_onnx(bundle: Path, factor: float) -> None:
    """Multiply every floating-point weight of policy.onnx (NaN makes them all NaN)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(bundle / "policy.onnx"))
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype.kind == "f" and array.size > 1:
            init.CopyFrom(numpy_helper.from_array((array * factor).astype(array.dtype), init.name))
    onnx.save(model, str(bundle / "policy.onnx"))


def _no_traceback(result) -> bool:
    return "Traceback" not in result.err and "Traceback" not in result.out


class _WritesMarker:
    """Unpickling this creates a file: proof that a pickle from a bundle was run."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _rewrite_pt2(bundle: Path, change) -> None:
    """policy.pt2 with its entries (a list of (name, bytes), in order) passed through ``change``; checksums rehashed."""
    with zipfile.ZipFile(bundle / "policy.pt2") as source:
        entries = [(info.filename, source.read(info)) for info in source.infolist()]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about a duplicate name: one test's attack
        for name, data in change(entries):
            target.writestr(name, data)
    (bundle / "policy.pt2").write_bytes(out.getvalue())
    _rehash(bundle)  # the attacker rewrites policy.json too


def _add_to_pt2(bundle: Path, entry: str, data: bytes) -> None:
    """policy.pt2 with one more entry (``entry`` inside the archive's top-level folder); checksums rehashed."""
    _rewrite_pt2(bundle, lambda entries: [*entries, (f"{entries[0][0].split('/')[0]}/{entry}", data)])


def _first_weight(entries: list, **changes) -> list:
    """The entries with the weights config's first entry changed (``changes``), the rest as they were."""
    out = []
    for name, data in entries:
        if name.endswith("model_weights_config.json"):
            config = json.loads(data)
            next(iter(config["config"].values())).update(changes)
            data = json.dumps(config).encode()
        out.append((name, data))
    return out


def _pickled_pt2(bundle: Path, marker: Path) -> None:
    """policy.pt2 with its first weight marked use_pickle and replaced by a hostile pickle."""

    def pickled(entries: list) -> list:
        folder, config = next((n.rsplit("/", 1)[0], d) for n, d in entries if n.endswith("model_weights_config.json"))
        first = next(iter(json.loads(config)["config"].values()))["path_name"]
        hostile = pickle.dumps(_WritesMarker(str(marker)))
        return [(n, hostile if n == f"{folder}/{first}" else d) for n, d in _first_weight(entries, use_pickle=True)]

    _rewrite_pt2(bundle, pickled)


class _WritesFile(torch.nn.Module):
    """A TorchScript 'policy' that writes a file when run (torch.from_file with shared=True)."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        written = torch.from_file(self.path, shared=True, size=1, dtype=torch.uint8)
        written.fill_(1)
        return (obs[:, 0] * 0.0 + written.sum().to(torch.float32)).to(torch.int64)


# ---------------------------------------------------------------- 13.1: no code from a bundle


def test_check_refuses_a_bundle_file_outside_the_bundle(cli, tiny_bundle, tmp_path):
    bundle = _copy(tiny_bundle, tmp_path)
    (tmp_path / "other").mkdir()
    shutil.copy(bundle / "policy.pt2", tmp_path / "other" / "policy.pt2")
    meta = _meta(bundle)
    meta["files"]["pt2"] = "../other/policy.pt2"
    meta["checksums"]["../other/policy.pt2"] = meta["checksums"]["policy.pt2"]
    _write_meta(bundle, meta)
    for args in (["check", str(bundle)], ["check", str(bundle), "--trust"]):
        result = cli(*args)
        assert result.code == 1 and "'../other/policy.pt2' is not a bare file name" in result.err, result
        assert _no_traceback(result)
    with pytest.raises(BundleError, match="not a bare file name"):
        PolicyRunner(bundle)


def test_check_refuses_a_symbolic_link_inside_the_bundle(cli, tiny_bundle, tmp_path):
    bundle = _copy(tiny_bundle, tmp_path)
    outside = tmp_path / "elsewhere.onnx"
    (bundle / "policy.onnx").rename(outside)
    (bundle / "policy.onnx").symlink_to(outside)  # same bytes, same checksum: still not the bundle's own file
    result = cli("check", str(bundle))
    assert result.code == 1 and "symbolic link" in result.err and _no_traceback(result)


def test_check_never_unpickles_a_hostile_pt2_even_with_trust(cli, tiny_bundle, tmp_path):
    bundle = _copy(tiny_bundle, tmp_path)
    marker = tmp_path / "pwned"
    _pickled_pt2(bundle, marker)
    plain = cli("check", str(bundle))
    assert not marker.exists()
    assert plain.code == 1 and "pickled data" in plain.err and _no_traceback(plain)
    trusting = cli("check", str(bundle), "--trust")
    assert not marker.exists()
    assert trusting.code == 1 and "sfspec never unpickles a bundle" in trusting.err and _no_traceback(trusting)


@pytest.mark.parametrize("folder", ["weights", "constants"])
def test_check_never_unpickles_a_legacy_format_pt2_even_with_trust(cli, tiny_bundle, tmp_path, folder):
    """torch.export.load reads data/<folder>/<model>.pt (the legacy format) with an unrestricted unpickler."""
    bundle = _copy(tiny_bundle, tmp_path)
    marker = tmp_path / "pwned"
    _add_to_pt2(bundle, f"data/{folder}/model.pt", pickle.dumps(_WritesMarker(str(marker))))
    for args in (["check", str(bundle)], ["check", str(bundle), "--trust"]):
        result = cli(*args)
        assert not marker.exists()
        assert result.code == 1 and f"data/{folder}/model.pt" in result.err and _no_traceback(result), result


def test_check_refuses_a_pt2_with_two_entries_of_one_name(cli, tiny_bundle, tmp_path):
    """Python's zipfile reads the last of two like-named entries, torch's reader maybe the first: refuse both."""
    bundle = _copy(tiny_bundle, tmp_path)

    def shadowed(entries):
        config = next((n, d) for n, d in entries if n.endswith("model_weights_config.json"))
        return _first_weight([config], use_pickle=True) + entries

    _rewrite_pt2(bundle, shadowed)
    result = cli("check", str(bundle), "--trust")
    assert result.code == 1 and "two entries named alike" in result.err and _no_traceback(result), result


def test_check_refuses_a_pt2_weight_stored_outside_the_raw_tensor_files(cli, tiny_bundle, tmp_path):
    bundle = _copy(tiny_bundle, tmp_path)

    _rewrite_pt2(bundle, lambda entries: _first_weight(entries, path_name="../models/model.json"))
    result = cli("check", str(bundle), "--trust")
    assert result.code == 1 and "not a raw weight_N tensor file" in result.err and _no_traceback(result), result


def test_check_refuses_a_pt2_carrying_compiled_code(cli, tiny_bundle, tmp_path):
    bundle = _copy(tiny_bundle, tmp_path)
    _add_to_pt2(bundle, "data/aotinductor/model/model.so", b"\x7fELF")  # torch.export.load would dlopen it
    result = cli("check", str(bundle), "--trust")
    assert result.code == 1 and "aotinductor" in result.err and _no_traceback(result)


def test_check_runs_torchscript_only_when_trusted(cli, tiny_bundle, tmp_path):
    """TorchScript is a program (this one writes a file): check skips it unless --trust, and says so."""
    bundle = _copy(tiny_bundle, tmp_path)
    marker = tmp_path / "written-by-torchscript"
    torch.jit.save(torch.jit.script(_WritesFile(str(marker))), str(bundle / "policy.pt"))
    _rehash(bundle)
    plain = cli("check", str(bundle))
    assert not marker.exists()
    assert plain.code == 0 and "torchscript  skipped" in plain.out and "--trust runs it" in plain.out, plain
    report = json.loads(cli("check", str(bundle), "--json").out)
    assert "skipped" in report["torchscript"] and "skipped" in report["pt2"] and report["onnx"]["mismatches"] == 0
    cli("check", str(bundle), "--trust")
    assert marker.exists()  # what --trust means: the bundle's programs run


def test_check_of_a_bundle_with_only_programs_needs_trust(cli, tiny_bundle, tmp_path):
    bundle = _copy(tiny_bundle, tmp_path)
    meta = _meta(bundle)
    del meta["files"]["onnx"]
    _write_meta(bundle, meta)
    result = cli("check", str(bundle))
    assert result.code == 1 and "nothing checked" in result.err and "--trust" in result.err
    assert cli("check", str(bundle), "--trust").code == 0


# ---------------------------------------------------------------- 13.4: NaN is never a match


@pytest.fixture(scope="module")
def box_bundle(tmp_path_factory) -> Path:
    """An ONNX bundle with a continuous, unbounded action (NaN would pass through to the output)."""
    root = tmp_path_factory.mktemp("box")
    (root / "spec.yaml").write_text("env: {id: SpaceTest/Unbounded-v0}\nmodel: {encoder: [linear: 8, tanh]}\n")
    from sfspec.cli import main

    assert main(["export", str(root / "spec.yaml"), "--out", str(root / "bundle"), "--formats", "onnx"]) == 0
    return root / "bundle"


def test_check_fails_a_bundle_whose_policy_outputs_nan(cli, box_bundle, tmp_path):
    bundle = _copy(box_bundle, tmp_path)
    _scale_onnx(bundle, float("inf"))  # finite nowhere, NaN nowhere: inf - inf makes the NaN at run time
    _regenerate_golden(bundle)  # golden outputs [[nan nan]] ...
    _rehash(bundle)  # ... and checksums that match
    assert np.isnan(np.load(bundle / "golden_io.npz")["batch/out/action"]).all()
    result = cli("check", str(bundle))
    assert result.code == 1 and "not finite" in result.out and _no_traceback(result), result
    _scale_onnx(bundle, float("nan"))  # NaN weights are refused before anything runs
    _rehash(bundle)
    result = cli("check", str(bundle))
    assert result.code == 1 and "holds NaN values" in result.err and _no_traceback(result), result


def test_export_refuses_a_model_that_outputs_nan(write_spec, tmp_path):
    loaded = pipeline.load(write_spec("env: {id: SpaceTest/Unbounded-v0}\nmodel: {encoder: [linear: 8, tanh]}\n"))
    model = pipeline.compile_spec(loaded)
    with torch.no_grad():
        model.action_head.linear.bias.fill_(float("nan"))
    with pytest.raises(ExportError, match="not finite"):
        export_bundle(model, loaded.data, tmp_path / "bundle", ("onnx",))
    assert not (tmp_path / "bundle").exists()


@pytest.mark.parametrize("part", ["weight", "bias"])
def test_export_refuses_a_discrete_policy_whose_logits_are_nan(write_spec, tmp_path, part):
    """argmax of NaN logits is 0 in eager and in every artifact alike: the outputs agree, the logits give it away."""
    loaded = pipeline.load(write_spec("env: {id: CartPole-v1}\nmodel: {encoder: [linear: 8, tanh]}\n"))
    model = pipeline.compile_spec(loaded)
    with torch.no_grad():
        getattr(model.action_head.linear, part).fill_(float("nan"))
    with pytest.raises(ExportError, match="action logits behind 'action' are not finite"):
        export_bundle(model, loaded.data, tmp_path / "bundle", ("onnx",))
    assert not (tmp_path / "bundle").exists()


def test_check_and_runner_refuse_a_discrete_onnx_with_nan_weights(cli, tiny_bundle, tmp_path):
    """NaN weights with golden data regenerated from them: every action 0, as recorded; still refused."""
    bundle = _copy(tiny_bundle, tmp_path)
    _scale_onnx(bundle, float("nan"))
    _regenerate_golden(bundle)
    _rehash(bundle)
    assert (np.load(bundle / "golden_io.npz")["batch/out/action"] == 0).all()
    result = cli("check", str(bundle))
    assert result.code == 1 and "policy.onnx: its weight" in result.err and "holds NaN values" in result.err, result
    assert _no_traceback(result)
    with pytest.raises(BundleError, match="holds NaN values"):
        PolicyRunner(bundle)


def test_check_refuses_a_pt2_with_nan_weights_even_with_trust(cli, tiny_bundle, tmp_path):
    bundle = _copy(tiny_bundle, tmp_path)

    def nan_weight(entries: list) -> list:  # the first layer's weights, same size, every value NaN
        nan = {n: np.full(len(d) // 4, np.nan, "<f4").tobytes() for n, d in entries if n.endswith("/weight_0")}
        return [(n, nan.get(n, d)) for n, d in entries]

    _rewrite_pt2(bundle, nan_weight)
    result = cli("check", str(bundle), "--trust")
    assert result.code == 1 and "policy.pt2: its weight 'weight_0' holds NaN values" in result.err, result
    assert _no_traceback(result)


def test_policy_runner_refuses_nan_observations_on_both_backends(tiny_bundle):
    """Unvalidated, onnxruntime and TorchScript disagree on NaN (a GRU's state came back 0 vs NaN): refuse it."""
    nan = np.array([np.nan, 0.0, 0.0, 0.0], dtype=np.float32)
    for backend in ("onnx", "torchscript"):
        runner = PolicyRunner(tiny_bundle, backend)
        with pytest.raises(ObservationError, match=r"non-finite value nan at index \(0, 0\)"):
            runner.act(nan)
        with pytest.raises(ObservationError, match="non-finite"):
            runner.act(np.array([0.0, np.inf, 0.0, 0.0]))


# ---------------------------------------------------------------- 13.5: checksums, verified before loading


@pytest.fixture(scope="module")
def other_onnx(tmp_path_factory) -> bytes:
    """policy.onnx of another export of the same model shape (other weights)."""
    root = tmp_path_factory.mktemp("other")
    (root / "spec.yaml").write_text("env: {id: CartPole-v1}\nmodel: {encoder: [linear: 8, tanh]}\n")
    from sfspec.cli import main

    assert main(["export", str(root / "spec.yaml"), "--out", str(root / "b"), "--formats", "onnx"]) == 0
    return (root / "b" / "policy.onnx").read_bytes()


def test_check_eval_and_runner_refuse_an_onnx_file_from_another_export(cli, tiny_bundle, other_onnx, tmp_path):
    bundle = _copy(tiny_bundle, tmp_path)
    (bundle / "policy.onnx").write_bytes(other_onnx)
    _regenerate_golden(bundle)
    meta = _meta(bundle)
    golden = (bundle / "golden_io.npz").read_bytes()
    meta["checksums"]["golden_io.npz"] = {"sha256": hashlib.sha256(golden).hexdigest(), "bytes": len(golden)}
    _write_meta(bundle, meta)  # golden data regenerated and re-hashed; policy.onnx's record left alone
    for args in (["check", str(bundle)], ["eval", str(bundle), "--episodes", "1"]):
        result = cli(*args)
        assert (
            result.code == 1
            and "policy.onnx: does not match policy.json's record" in result.err
            and _no_traceback(result)
        ), result
    with pytest.raises(BundleError, match=r"does not match policy\.json's record"):
        PolicyRunner(bundle)
    _rehash(bundle)  # every record rewritten: the ONNX file's own metadata still names other weights
    result = cli("check", str(bundle))
    assert result.code == 1 and "its weights_sha256 differs from policy.json's" in result.err


def test_check_and_runner_refuse_weights_scaled_by_2_percent(cli, tiny_bundle, tmp_path):
    bundle = _copy(tiny_bundle, tmp_path)
    _scale_onnx(bundle, 1.02)
    result = cli("check", str(bundle))
    assert result.code == 1 and "policy.onnx: does not match policy.json's record" in result.err
    with pytest.raises(BundleError, match=r"does not match policy\.json's record"):
        PolicyRunner(bundle)


def test_check_refuses_altered_golden_data(cli, tiny_bundle, tmp_path):
    bundle = _copy(tiny_bundle, tmp_path)
    golden = dict(np.load(bundle / "golden_io.npz"))
    golden["batch/out/action"] = 1 - golden["batch/out/action"]
    np.savez(bundle / "golden_io.npz", **golden)
    result = cli("check", str(bundle))
    assert result.code == 1 and "golden_io.npz: does not match policy.json's record" in result.err


def test_a_bundle_listing_no_artifact_is_an_error(cli, tiny_bundle, tmp_path):
    bundle = _copy(tiny_bundle, tmp_path)
    meta = _meta(bundle)
    meta["files"] = {}
    _write_meta(bundle, meta)
    result = cli("check", str(bundle))
    assert result.code == 1 and "'files' lists no artifact" in result.err and _no_traceback(result)
    with pytest.raises(BundleError, match="lists no artifact"):
        PolicyRunner(bundle)


def test_a_bundle_without_checksums_is_refused(cli, tiny_bundle, tmp_path):
    bundle = _copy(tiny_bundle, tmp_path)
    meta = _meta(bundle)
    del meta["bundle_format"], meta["checksums"]
    _write_meta(bundle, meta)
    result = cli("check", str(bundle))
    assert result.code == 1 and "written without file checksums" in result.err
    assert "export the bundle again" in result.err


# ---------------------------------------------------------------- 13.6: float32 noise of deep networks


PIXEL_SPEC = """\
env: {id: sfspec/PixelGoal-v0}
model:
  encoder: [impala_cnn, {linear: 256}, relu]
  core: [{gru: 128}]
"""


@pytest.fixture(scope="module")
def pixel_bundle(tmp_path_factory) -> Path:
    """The held-out pixel spec's shape (IMPALA CNN -> linear 256 -> GRU 128, uint8 RGB, discrete), smaller images."""
    root = tmp_path_factory.mktemp("pixel")
    (root / "spec.yaml").write_text(PIXEL_SPEC)
    from sfspec.cli import main

    code = main(["export", str(root / "spec.yaml"), "--out", str(root / "bundle"), "--formats", "onnx"])
    assert code == 0  # a fixed atol 1e-5 refused this one: ONNX's h_out differs from eager by ~5e-5
    return root / "bundle"


@pytest.mark.slow
def test_deep_pixel_policy_passes_the_gate_measured_against_float64(cli, pixel_bundle):
    meta = _meta(pixel_bundle)
    assert meta["parity"]["reference"] == "float64 eager PyTorch"
    assert meta["observations"][0]["dtype"] == "uint8" and meta["state"][0]["shape"] == ["batch", 1, 128]
    golden = np.load(pixel_bundle / "golden_io.npz")
    assert 0 < float(golden["batch/noise/h_out"]) < 1e-4  # eager float32's own distance from float64
    result = cli("check", str(pixel_bundle))
    assert result.code == 0 and "mismatches 0" in result.out, result.out


@pytest.mark.slow
def test_deep_pixel_policy_with_weights_scaled_by_2_percent_fails_check(cli, pixel_bundle, tmp_path):
    """The tolerance derived from the model's noise still refuses a genuinely wrong artifact."""
    bundle = _copy(pixel_bundle, tmp_path)
    _scale_onnx(bundle, 1.02)
    _rehash(bundle)
    result = cli("check", str(bundle), "--json")
    assert result.code == 1 and json.loads(result.out)["onnx"]["mismatches"] > 10, result.out


def test_parity_gate_refuses_an_onnx_file_with_weights_scaled_by_2_percent(cli, write_spec, tmp_path, monkeypatch):
    from sfspec.export import writers

    real = writers.write_onnx

    def scaled(policy, *args):
        wrong = __import__("copy").deepcopy(policy)
        with torch.no_grad():
            for p in wrong.parameters():
                p.mul_(1.02)
        return real(wrong, *args)

    monkeypatch.setattr(writers, "write_onnx", scaled)  # the onnx format's registered writer
    spec = write_spec("env: {id: Pendulum-v1}\nmodel: {encoder: [linear: 16, tanh], core: [gru: 8]}\n")
    result = cli("export", spec, "--out", str(tmp_path / "bundle"), "--formats", "onnx")
    assert result.code == 1 and "parity check failed" in result.err and "policy.onnx" in result.err
    assert not (tmp_path / "bundle").exists()


def _tied_cartpole(write_spec):
    """A CartPole policy whose two logits are equal: every decision is a tie."""
    loaded = pipeline.load(write_spec("env: {id: CartPole-v1}\nmodel: {encoder: [linear: 8, tanh]}\n"))
    model = pipeline.compile_spec(loaded)
    with torch.no_grad():
        head = model.action_head.linear
        head.weight[1] = head.weight[0]
        head.bias[1] = head.bias[0]
    return loaded, model


def test_discrete_differences_at_near_ties_are_reported_not_failed(write_spec, tmp_path, monkeypatch):
    from sfspec.export.artifact import Artifact

    real = Artifact.__call__

    def other_choice(self, inputs):  # what float32 rounding may do where the two best logits are equal
        return [1 - o if o.dtype == np.int64 else o for o in real(self, inputs)]

    monkeypatch.setattr(Artifact, "__call__", other_choice)
    loaded, tied = _tied_cartpole(write_spec)
    report = export_bundle(tied, loaded.data, tmp_path / "tied", ("onnx",))
    assert report.near_ties["onnx"] and "near-ties" in report.near_ties["onnx"][0]
    assert _meta(tmp_path / "tied")["parity"]["near_ties"]["onnx"] > 0
    clear = pipeline.compile_spec(loaded)  # the same flip where decisions are clear is a failure
    with pytest.raises(ExportError, match="discrete values differ"):
        export_bundle(clear, loaded.data, tmp_path / "clear", ("onnx",))


# ---------------------------------------------------------------- 13.9: atomic bundles


def test_reexport_on_a_full_disk_leaves_the_old_bundle_whole(cli, tiny_run, tiny_bundle, tmp_path, monkeypatch):
    bundle = _copy(tiny_bundle, tmp_path)
    before = {p.name: p.read_bytes() for p in bundle.iterdir()}

    def disk_full(*args, **kwargs):  # the golden data is written after the new ONNX and TorchScript files
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", disk_full)
    result = cli("export", str(tiny_run), "--out", str(bundle))
    assert result.code == 1 and "No space left on device" in result.err and _no_traceback(result), result
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no half-built directory left behind
    monkeypatch.undo()
    assert cli("check", str(bundle)).code == 0


def test_reexport_replaces_an_earlier_bundle(cli, write_spec, tiny_bundle, tmp_path):
    bundle = _copy(tiny_bundle, tmp_path)
    spec = write_spec("env: {id: CartPole-v1}\nmodel: {encoder: [linear: 8, tanh]}\n")
    assert cli("export", spec, "--out", str(bundle), "--formats", "onnx").code == 0
    assert sorted(p.name for p in bundle.iterdir()) == ["golden_io.npz", "golden_io.pt", "policy.json", "policy.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "spec.yaml"]
    assert cli("check", str(bundle)).code == 0


def test_reexport_exchanges_the_bundles_so_the_path_never_lacks_one(
    cli, write_spec, tiny_bundle, tmp_path, monkeypatch
):
    from sfspec.export import staging

    probe = tmp_path / "probe"
    (probe / "a").mkdir(parents=True)
    (probe / "b").mkdir()
    if not staging.exchange(probe / "a", probe / "b"):
        pytest.skip("this kernel or file system cannot exchange two directories")
    shutil.rmtree(probe)
    bundle = _copy(tiny_bundle, tmp_path)
    seen, exchanged, real_rename, real_exchange = [], [], os.rename, staging.exchange

    def watched_rename(src, dst, *args, **kwargs):  # is there a whole bundle at the path as each rename starts?
        seen.append((bundle / "policy.json").is_file())
        return real_rename(src, dst, *args, **kwargs)

    def watched_exchange(a, b):
        exchanged.append(real_exchange(a, b))
        seen.append((bundle / "policy.json").is_file())
        return exchanged[-1]

    monkeypatch.setattr(os, "rename", watched_rename)
    monkeypatch.setattr(staging, "exchange", watched_exchange)
    spec = write_spec("env: {id: CartPole-v1}\nmodel: {encoder: [linear: 8, tanh]}\n")
    assert cli("export", spec, "--out", str(bundle), "--formats", "onnx").code == 0
    assert exchanged == [True] and seen and all(seen), seen
    assert sorted(p.name for p in bundle.iterdir()) == ["golden_io.npz", "golden_io.pt", "policy.json", "policy.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "spec.yaml"]  # the earlier bundle is gone
    assert cli("check", str(bundle)).code == 0


def _no_renameat2():
    return None


def _renameat2_refused_by_the_file_system():
    import ctypes

    def refuse(*args):
        ctypes.set_errno(errno.EINVAL)  # what a file system without RENAME_EXCHANGE answers
        return -1

    return refuse


@pytest.mark.parametrize("why", [_no_renameat2, _renameat2_refused_by_the_file_system])
def test_reexport_without_an_atomic_exchange_still_replaces_the_bundle(
    cli, write_spec, tiny_bundle, tmp_path, monkeypatch, why
):
    from sfspec.export import staging

    bundle = _copy(tiny_bundle, tmp_path)
    monkeypatch.setattr(staging, "_renameat2", why)
    spec = write_spec("env: {id: CartPole-v1}\nmodel: {encoder: [linear: 8, tanh]}\n")
    assert cli("export", spec, "--out", str(bundle), "--formats", "onnx").code == 0
    assert sorted(p.name for p in bundle.iterdir()) == ["golden_io.npz", "golden_io.pt", "policy.json", "policy.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "spec.yaml"]
    assert cli("check", str(bundle)).code == 0


def test_export_refuses_to_replace_a_directory_that_is_not_a_bundle(cli, tiny_run):
    result = cli("export", str(tiny_run), "--out", str(tiny_run))
    assert result.code == 1 and "not a bundle's" in result.err and "checkpoint.pt" in result.err
    assert (tiny_run / "checkpoint.pt").is_file()


# ---------------------------------------------------------------- 13.16: messages, not tracebacks


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes(b"" if how == "empty" else data[: len(data) // 2])


DAMAGE = [(name, how) for name in ("policy.onnx", "policy.json") for how in ("empty", "truncated")]


@pytest.mark.parametrize(("name", "how"), [*DAMAGE, ("golden_io.npz", "truncated"), ("golden_io.npz", "empty")])
def test_check_reports_a_damaged_file_clearly(cli, tiny_bundle, tmp_path, name, how):
    bundle = _copy(tiny_bundle, tmp_path)
    _damage(bundle / name, how)
    result = cli("check", str(bundle))
    assert result.code == 1 and name in result.err and _no_traceback(result), result


@pytest.mark.parametrize(("name", "how"), DAMAGE)
def test_eval_and_runner_report_a_damaged_file_clearly(cli, tiny_bundle, tmp_path, name, how):
    bundle = _copy(tiny_bundle, tmp_path)
    _damage(bundle / name, how)
    result = cli("eval", str(bundle), "--episodes", "1")
    assert result.code == 1 and name in result.err and _no_traceback(result), result
    with pytest.raises(BundleError, match=name.replace(".", r"\.")):
        PolicyRunner(bundle)


def test_export_into_an_unwritable_place_is_a_clear_error(cli, tiny_run, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = cli("export", str(tiny_run), "--out", str(blocker / "bundle"), "--formats", "onnx")
    assert result.code == 1 and "cannot write the bundle" in result.err and _no_traceback(result), result


def test_export_refused_by_the_file_system_is_a_clear_error(cli, tiny_run, tmp_path, monkeypatch):
    """A read-only mount refuses the bundle's new directory (as root too, whom directory modes do not stop)."""
    import tempfile

    def read_only(*args, **kwargs):
        raise PermissionError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path))

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    result = cli("export", str(tiny_run), "--out", str(tmp_path / "bundle"), "--formats", "onnx")
    assert result.code == 1 and "Read-only file system" in result.err and _no_traceback(result), result


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_export_into_a_read_only_directory_is_a_clear_error(cli, tiny_run, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    result = cli("export", str(tiny_run), "--out", str(locked / "bundle"), "--formats", "onnx")
    assert result.code == 1 and "Permission denied" in result.err and _no_traceback(result), result


def test_export_with_a_malformed_batch_is_a_usage_error(cli, tiny_run, tmp_path):
    result = cli("export", str(tiny_run), "--out", str(tmp_path / "b"), "--batch", "many")
    assert result.code == 2 and "--batch: 'many'" in result.err and _no_traceback(result)


# ---------------------------------------------------------------- 13.18: PolicyRunner takes exactly its inputs


GARBAGE = {
    "strings": ("obs", ["a", "b", "c", "d"], 1, "<U1 values"),
    "booleans": ("obs", np.array([True, False, True, False]), 1, "bool values"),
    "complex numbers": ("obs", np.zeros(4, dtype=np.complex64), 1, "complex64 values"),
    "shape (2, 2) for (4,)": ("obs", np.zeros((2, 2), np.float32), 1, r"shape \(2, 2\)"),
    "batch (2, 8) for (4, 4)": ("obs", np.zeros((2, 8), np.float32), 4, r"shape \(2, 8\); expected \(4, 4\)"),
    "an int64 that float32 rounds": (
        "obs",
        np.array([2**24 + 1, 0, 0, 0], np.int64),
        1,
        r"int64 value 16777217 at index \(0, 0\) is not exactly a float32 \(integers up to 16777216 are\)",
    ),
    "a float64 beyond float32": ("obs", np.array([1e39, 0.0, 0.0, 0.0]), 1, "beyond float32's range"),
    "an extra key": ({"obs": np.zeros(4, np.float32), "junk": 1}, None, 1, r"unexpected keys \['junk'\]"),
    "a wrong key": ({"observation": np.zeros(4, np.float32)}, None, 1, "unexpected keys"),
}


@pytest.mark.parametrize("garbage", list(GARBAGE))
def test_policy_runner_refuses_garbage_observations(tiny_bundle, garbage):
    key, value, batch, message = GARBAGE[garbage]
    runner = PolicyRunner(tiny_bundle, batch=batch)
    with pytest.raises(ObservationError, match=message):
        runner.act(key if value is None else {key: value})


def test_policy_runner_accepts_exact_observations_and_can_skip_validation(tiny_bundle):
    checked = PolicyRunner(tiny_bundle, batch=2)
    fast = PolicyRunner(tiny_bundle, batch=2, validate=False)
    obs = np.array([[0.1, 0.0, -0.05, 0.2], [0.0, 0.3, 0.02, -0.1]], dtype=np.float64)  # float64 is cast
    np.testing.assert_array_equal(checked.act(obs), fast.act(obs.astype(np.float32)))
    single = PolicyRunner(tiny_bundle)
    assert single.act(obs[0]).shape == (1,) and single.act({"obs": obs[:1]}).shape == (1,)
    with pytest.raises(ValueError, match="reset rows"):
        checked.reset([2])


def test_policy_runner_takes_int64_observations_for_a_float_input_on_both_backends(tiny_bundle):
    """Integer readings (encoder ticks) for a float input: cast, as float64 is, when float32 holds them exactly."""
    ticks = np.array([[3, -1, 0, 2], [2**24, 7, -(2**26), 1]], dtype=np.int64)  # 2**26 is exactly a float32
    for backend in ("onnx", "torchscript"):
        runner = PolicyRunner(tiny_bundle, backend, batch=2)
        np.testing.assert_array_equal(runner.act(ticks), runner.act(ticks.astype(np.float32)))
        assert PolicyRunner(tiny_bundle, backend).act(np.ones(4, np.int64)).shape == (1,)


# ---------------------------------------------------------------- 14.7: file modes follow the umask


def test_bundle_files_follow_the_umask(cli, write_spec, tmp_path):
    from sfspec.io import atomic_write_text

    spec = write_spec("env: {id: CartPole-v1}\nmodel: {encoder: [linear: 4]}\n")
    old = os.umask(0o027)
    try:
        assert cli("export", spec, "--out", str(tmp_path / "bundle"), "--formats", "onnx").code == 0
        atomic_write_text(tmp_path / "notes.txt", "hello")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "bundle").iterdir()}
    assert set(modes.values()) == {0o640}, modes
    assert stat.S_IMODE((tmp_path / "bundle").stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "notes.txt").stat().st_mode) == 0o640
    (tmp_path / "notes.txt").chmod(0o600)  # a mode the user chose is kept when the file is rewritten
    atomic_write_text(tmp_path / "notes.txt", "again")
    assert stat.S_IMODE((tmp_path / "notes.txt").stat().st_mode) == 0o600


# ---------------------------------------------------------------- 14.3: a clean export prints no warnings


def test_export_prints_no_warnings(cli, write_spec, tmp_path):
    spec = write_spec("env: {id: CartPole-v1}\nmodel: {encoder: [linear: 8, tanh], core: [gru: 4]}\n")
    records: list[logging.LogRecord] = []
    catcher = logging.Handler(logging.WARNING)
    catcher.emit = records.append  # type: ignore[method-assign]
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    registration.addHandler(catcher)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = cli("export", spec, "--out", str(tmp_path / "bundle"))
    finally:
        registration.removeHandler(catcher)
    assert result.code == 0, result.err
    assert [f"{w.filename}:{w.lineno}: {w.message}" for w in caught] == []
    assert [r.getMessage() for r in records] == []
    assert result.err == ""


def test_check_refuses_a_pt2_with_a_compressed_entry_without_inflating_it(cli, tiny_bundle, tmp_path):
    """A few hundred kilobytes of deflated zeros would inflate to gigabytes if the screen read them."""
    bundle = _copy(tiny_bundle, tmp_path)
    with zipfile.ZipFile(bundle / "policy.pt2") as source:
        entries = [(info.filename, source.read(info)) for info in source.infolist()]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:
        for name, data in entries:
            compress = zipfile.ZIP_DEFLATED if name.endswith("model_weights_config.json") else zipfile.ZIP_STORED
            target.writestr(name, data, compress_type=compress)
    (bundle / "policy.pt2").write_bytes(out.getvalue())
    _rehash(bundle)
    result = cli("check", str(bundle))
    assert result.code == 1 and "is compressed" in result.err and _no_traceback(result), result


def test_policy_runner_reset_of_no_rows_is_nothing(tiny_bundle):
    runner = PolicyRunner(tiny_bundle, batch=2)
    runner.reset([])
    runner.reset(np.array([], dtype=np.int64))
