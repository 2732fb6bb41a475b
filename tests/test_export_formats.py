"""The export formats registry: one registration reaches the schema, the CLI, the gate, check and the runner.

Also: the export's defaults come from the schema alone, and the runtime never imports export.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

from sfspec.export import writers
from sfspec.export.formats import EXPORT_FORMATS, ExportFormat, register_format
from sfspec.export.runner import PolicyRunner
from sfspec.spec import schema

ROOT = Path(__file__).resolve().parent.parent
SPEC = "env: {id: CartPole-v1}\nmodel: {encoder: [linear: 8, tanh]}\n"


@pytest.fixture
def registered():
    """Register formats for one test; every one is unregistered afterwards, whatever happens."""
    names: list[str] = []

    def register(fmt: ExportFormat) -> ExportFormat:
        names.append(fmt.name)
        return register_format(fmt)

    yield register
    for name in names:
        EXPORT_FORMATS.unregister(name)


def _onnx_copy(**changes) -> ExportFormat:
    """A toy format: the ONNX file under another name (the same writer, screen and loader)."""
    fields = {
        "name": "onnx_copy",
        "file": "policy_copy.onnx",
        "title": "ONNX copy",
        "write": writers.write_onnx,  # a plugin passes functions; the built-in formats name them as strings
        "load": "sfspec.export.artifact:load_onnx",
        "screen": "sfspec.export.screen:screen_onnx",
        "default": False,
        "policy_runner": True,
    }
    return ExportFormat(**{**fields, **changes})


def _formats_schema() -> dict:
    return schema.build_schema()["properties"]["export"]["properties"]["formats"]


def _help(capsys, *args: str) -> str:
    from sfspec.cli import main

    with pytest.raises(SystemExit):
        main([*args, "--help"])
    return capsys.readouterr().out


def test_a_registered_format_reaches_the_schema_the_cli_check_and_the_runner(
    cli, capsys, write_spec, tmp_path, registered
):
    registered(_onnx_copy())
    assert "onnx_copy" in _formats_schema()["items"]["enum"]
    assert "onnx_copy" not in _formats_schema()["default"]  # registered with default=False
    assert "onnx,torchscript,pt2,onnx_copy" in " ".join(_help(capsys, "export").split())
    valid = write_spec(SPEC + "export: {formats: [onnx_copy]}\n", "copy.yaml")
    assert cli("validate", valid, "--no-env").code == 0

    bundle = tmp_path / "bundle"
    result = cli("export", write_spec(SPEC), "--out", str(bundle), "--formats", "onnx,onnx_copy")
    assert result.code == 0, result.err
    assert "policy_copy.onnx" in result.out and "onnx_copy" in result.out  # its parity worst error is reported
    meta = json.loads((bundle / "policy.json").read_text())
    assert meta["files"] == {"onnx": "policy.onnx", "onnx_copy": "policy_copy.onnx"}
    assert "policy_copy.onnx" in meta["checksums"] and "onnx_copy" in meta["parity_worst_abs_error"]

    report = json.loads(cli("check", str(bundle), "--json").out)  # data, not a program: run without --trust
    assert report["onnx_copy"]["mismatches"] == 0 and "skipped" not in report["onnx_copy"]
    obs = np.zeros((1, 4), np.float32)
    assert PolicyRunner(bundle, "onnx_copy").act(obs) == PolicyRunner(bundle, "onnx").act(obs)


def test_an_unregistered_format_is_refused_by_the_schema_the_cli_and_check(cli, write_spec, tmp_path, registered):
    registered(_onnx_copy())
    bundle = tmp_path / "bundle"
    assert cli("export", write_spec(SPEC), "--out", str(bundle), "--formats", "onnx_copy").code == 0
    EXPORT_FORMATS.unregister("onnx_copy")

    assert "onnx_copy" not in _formats_schema()["items"]["enum"]
    invalid = cli("validate", write_spec(SPEC + "export: {formats: [onnx_copy]}\n", "copy.yaml"), "--no-env")
    assert invalid.code == 2 and "export.formats" in invalid.err
    refused = cli("export", write_spec(SPEC), "--formats", "onnx,onnx_copy")
    assert (
        refused.code == 2 and "--formats: unknown format 'onnx_copy'; choose from onnx, torchscript, pt2" in refused.err
    )
    check = cli("check", str(bundle))
    assert check.code == 1 and "unknown format 'onnx_copy'" in check.err and "Traceback" not in check.err


def test_a_registered_format_that_runs_code_is_run_by_check_only_with_trust(
    cli, capsys, write_spec, tmp_path, registered
):
    """Whether running a format executes code is the registration's ``runs_code``: it alone decides --trust."""
    registered(
        ExportFormat(
            name="ts_copy",
            file="policy_copy.pt",
            title="TorchScript copy",
            write="sfspec.export.writers:write_torchscript",
            load="sfspec.export.artifact:load_torchscript",
            runs_code="a copy of the TorchScript program",
            default=False,
        )
    )
    assert "policy_copy.pt (TorchScript copy)" in " ".join(_help(capsys, "check").split())
    bundle = tmp_path / "bundle"
    assert cli("export", write_spec(SPEC), "--out", str(bundle), "--formats", "onnx,ts_copy").code == 0
    untrusted = json.loads(cli("check", str(bundle), "--json").out)
    assert untrusted["ts_copy"] == {
        "skipped": "policy_copy.pt not run: a copy of the TorchScript program; --trust runs it"
    }
    trusted = json.loads(cli("check", str(bundle), "--json", "--trust").out)
    assert trusted["ts_copy"]["mismatches"] == 0
    with pytest.raises(ValueError, match="backend must be 'onnx' or 'torchscript'"):
        PolicyRunner(bundle, "ts_copy")  # not registered for PolicyRunner


def test_a_mismatching_registered_format_fails_the_parity_gate(cli, write_spec, tmp_path, registered):
    """The gate judges every registered format it writes: a writer whose file computes something else is refused."""

    def wrong_onnx(policy, example, config, metadata, path):
        wrong = __import__("copy").deepcopy(policy)
        for p in wrong.parameters():
            p.data.mul_(1.02)
        return writers.write_onnx(wrong, example, config, metadata, path)

    registered(_onnx_copy(write=wrong_onnx))
    spec = write_spec("env: {id: Pendulum-v1}\nmodel: {encoder: [linear: 8, tanh]}\n")
    result = cli("export", spec, "--out", str(tmp_path / "bundle"), "--formats", "onnx,onnx_copy")
    assert result.code == 1 and "parity check failed" in result.err and "policy_copy.onnx" in result.err
    assert not (tmp_path / "bundle").exists()


@pytest.mark.parametrize(
    "file, problem",
    [
        ("policy.onnx", "taken by format 'onnx'"),
        ("policy.json", "taken by the bundle itself"),
        ("golden_io.npz", "taken by the bundle itself"),
        ("../policy.onnx", "not a bare file name"),
        ("sub/policy.onnx", "not a bare file name"),
    ],
)
def test_a_format_cannot_take_another_files_name_or_leave_the_bundle(file, problem):
    with pytest.raises(ValueError, match=problem):
        register_format(_onnx_copy(file=file))
    assert "onnx_copy" not in EXPORT_FORMATS


def test_a_format_name_cannot_hold_a_comma_or_replace_a_format_unasked():
    with pytest.raises(ValueError, match="without commas"):
        register_format(_onnx_copy(name="onnx,copy"))
    with pytest.raises(KeyError, match="already registered"):
        register_format(_onnx_copy(name="onnx", file="policy_other.onnx"))
    assert EXPORT_FORMATS.get("onnx").file == "policy.onnx"


def test_export_defaults_come_from_the_schema(cli, capsys, write_spec, tmp_path, monkeypatch):
    """Change the schema's opset default and both `sfspec export` and its help follow (nothing retypes 18)."""
    real = schema._SECTIONS["export"]

    def opset_17() -> dict:
        section = real()
        section["properties"]["opset"] = {**section["properties"]["opset"], "default": 17}
        return section

    monkeypatch.setitem(schema._SECTIONS, "export", opset_17)
    assert "ONNX opset (default 17)" in _help(capsys, "export")
    bundle = tmp_path / "bundle"
    assert cli("export", write_spec(SPEC), "--out", str(bundle), "--formats", "onnx").code == 0
    assert json.loads((bundle / "policy.json").read_text())["opset"] == 17


def test_export_options_override_the_spec_and_bad_ones_name_the_option(cli, write_spec, tmp_path):
    spec = write_spec(SPEC + "export: {formats: [onnx], batch: 2, with_value: true}\n")
    bundle = tmp_path / "bundle"
    assert cli("export", spec, "--out", str(bundle), "--batch", "3").code == 0
    meta = json.loads((bundle / "policy.json").read_text())
    assert (meta["batch"], meta["with_value"], list(meta["files"])) == (3, True, ["onnx"])
    bad = cli("export", spec, "--out", str(tmp_path / "other"), "--batch", "0")
    assert bad.code == 2 and "--batch: '0' is neither 'dynamic' nor a positive batch size" in bad.err


def test_the_runtime_never_imports_export():
    """Bundle evaluation lives in export (export builds on the runtime, never the other way round)."""
    offenders = []
    for path in sorted((ROOT / "sfspec" / "runtime").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            offenders += [f"{path.name}: {n}" for n in names if n == "sfspec.export" or n.startswith("sfspec.export.")]
    assert not offenders, offenders
