"""validate / schema / summary as users run them, and the spec language's composition rules."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jsonschema
import pytest
import yaml
from conftest import ROOT, SPECS

from sfspec.spec.loader import load_spec


def test_specs_ship_for_every_task_the_readme_names():
    names = {p.stem for p in SPECS}
    assert {"cartpole", "acrobot", "pendulum", "memory", "pixels", "robot", "halfcheetah"} <= names


@pytest.mark.parametrize("spec", SPECS, ids=[p.stem for p in SPECS])
def test_every_bundled_spec_validates_compiles_and_summarises(cli, spec):
    assert cli("validate", str(spec)).code == 0
    result = cli("summary", str(spec), "--json")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert data["params_total"] > 0
    assert data["params_total"] == sum(r["params"] for r in data["layers"])


def test_emitted_schema_accepts_every_bundled_spec_with_plain_jsonschema(cli):
    schema = json.loads(cli("schema").out)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for spec in SPECS:
        data = yaml.safe_load(spec.read_text())  # the file as an editor sees it (extends not merged)
        errors = list(validator.iter_errors(data))
        assert not errors, (spec, [e.message for e in errors])
    assert list(validator.iter_errors({"env": {"id": "x"}, "model": {"encoder": [{"conv2": 3}]}}))


def test_bundled_specs_point_editors_at_the_schema():
    for spec in SPECS:
        assert spec.read_text().startswith("# yaml-language-server: $schema="), spec


def test_schema_written_to_a_file(cli, tmp_path):
    out = tmp_path / "schema.json"
    assert cli("schema", "--out", str(out)).code == 0
    assert json.loads(out.read_text())["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_committed_schema_file_is_current(cli):
    committed = json.loads((ROOT / "schema" / "sfspec.schema.json").read_text())
    fresh = json.loads(
        subprocess.run([sys.executable, "-m", "sfspec", "schema"], capture_output=True, text=True, check=True).stdout
    )
    assert committed == fresh, "run: sfspec schema --out schema/sfspec.schema.json"


def test_validate_many_files_reports_all(cli, write_spec):
    good = write_spec("env: {id: CartPole-v1}\nmodel: {}\n", "good.yaml")
    bad1 = write_spec("env: {id: CartPole-v1}\nmodel: {encoder: [tahn]}\n", "bad1.yaml")
    bad2 = write_spec("env: {id: CartPole-v1, num_env: 1}\nmodel: {}\n", "bad2.yaml")
    result = cli("validate", good, bad1, bad2)
    assert result.code == 2
    assert f"{good}: ok" in result.out
    assert f"{bad1}:2:19:" in result.err and f"{bad2}:1:24:" in result.err


def test_validate_does_not_import_torch(tmp_path):
    code = (
        "import sys; from sfspec.cli import main; "
        f"code = main(['validate', *{[str(p) for p in SPECS]!r}]); "
        "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(code)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_summary_table_lists_every_layer(cli):
    result = cli("summary", str(ROOT / "specs" / "cartpole.yaml"))
    assert result.code == 0
    lines = result.out.splitlines()
    assert lines[0] == "env: CartPole-v1"
    assert any(
        line.split()[:3] == ["actor.encoder[0]", "linear", "(64,)"] and line.split()[3] == "320" for line in lines
    )
    assert "trainable parameters: 9,155" in result.out


def test_summary_json_counts_trainable_parameters(cli):
    data = json.loads(cli("summary", str(ROOT / "specs" / "cartpole.yaml"), "--json").out)
    # actor and critic: 4*64+64 + 64*64+64 each; heads 64*2+2 and 64+1
    assert data["params_total"] == 2 * (320 + 4160) + 130 + 65
    assert data["observation"] == "Box(4,) float32" and data["action"] == "Discrete(2)"


def test_extends_deep_merges_and_set_overrides(tmp_path, cli):
    (tmp_path / "base.yaml").write_text(
        "env: {id: CartPole-v1, num_envs: 8}\nmodel:\n  encoder: [linear: 64, tanh]\n  share_weights: true\n"
        "train: {lr: 3e-4, steps: 1000}\n"
    )
    (tmp_path / "mid.yaml").write_text("extends: base.yaml\ntrain: {gamma: 0.9}\n")
    (tmp_path / "top.yaml").write_text("extends: [mid.yaml]\nmodel:\n  encoder: [linear: 16]\n")
    loaded = load_spec(
        tmp_path / "top.yaml", ["train.lr=1e-3", "model.encoder[0].linear=32", "env.kwargs.sutton_barto_reward=true"]
    )
    assert loaded.data == {
        "env": {"id": "CartPole-v1", "num_envs": 8, "kwargs": {"sutton_barto_reward": True}},
        "model": {"encoder": [{"linear": 32}], "share_weights": True},  # lists are replaced, mappings merged
        "train": {"lr": 1e-3, "steps": 1000, "gamma": 0.9},
    }
    assert str(loaded.source_map.locate(("env", "num_envs"))).endswith("base.yaml:1:34")
    assert str(loaded.source_map.locate(("train", "gamma"))).endswith("mid.yaml:2:16")
    assert str(loaded.source_map.locate(("train", "lr"))) == "--set train.lr=1e-3"
    result = cli("summary", str(tmp_path / "top.yaml"), "--set", "model.encoder[0].linear=32", "--json")
    assert result.code == 0 and json.loads(result.out)["layers"][0]["output_shape"] == [32]


def test_errors_in_a_base_file_point_into_the_base(tmp_path, cli):
    (tmp_path / "base.yaml").write_text("env: {id: CartPole-v1}\nmodel:\n  encoder: [linar: 3]\n")
    (tmp_path / "top.yaml").write_text("extends: base.yaml\ntrain: {lr: 1e-3}\n")
    result = cli("validate", str(tmp_path / "top.yaml"))
    assert result.code == 2
    assert f"{tmp_path / 'base.yaml'}:3:13: model.encoder[0]: unknown layer 'linar'" in result.err


def test_yaml_numbers_read_as_users_mean(write_spec):
    loaded = load_spec(write_spec("env: {id: CartPole-v1}\nmodel: {}\ntrain: {lr: 3e-4, steps: 100_000}\n"))
    assert loaded.data["train"] == {"lr": 3e-4, "steps": 100000}


def test_entry_point_console_script_runs():
    result = subprocess.run(["sfspec", "--version"], capture_output=True, text=True, env=dict(os.environ))
    assert result.returncode == 0 and result.stdout.startswith("sfspec ")
