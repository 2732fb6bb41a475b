"""Hostile and unusual specs: refused with a positioned message (exit 2), never a traceback or a stalled machine."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from gymnasium import spaces

from sfspec import pipeline
from sfspec.compiler import budget
from sfspec.compiler.budget import MAX_LAYERS, check_memory, count_params
from sfspec.errors import SpecError
from sfspec.spec import loader
from sfspec.spec.loader import MAX_DEPTH, MAX_EXTENDS, MAX_SPEC_BYTES, MAX_VALUES, LoadedSpec, SourceMap

CARTPOLE = """
env: {id: CartPole-v1}
model:
  encoder: [linear: 16, tanh]
"""

SECRET = "hunter2-top-secret"


def _refused(result, where: str, message: str) -> None:
    assert result.code == 2, result
    assert "Traceback" not in result.err
    assert where in result.err, result.err
    assert message in result.err, result.err


# ---------------------------------------------------------------- A: extends reads YAML files only


def test_extends_refuses_a_file_that_is_not_yaml(cli, write_spec, tmp_path):
    (tmp_path / "secrets.txt").write_text(f"password: {SECRET}\n")
    path = write_spec(CARTPOLE + "extends: secrets.txt\n")
    result = cli("validate", path)
    _refused(result, f"{path}:4:10: extends: secrets.txt is not a YAML file: extends takes", "or .yml files only")
    assert SECRET not in result.err


def test_extends_refuses_proc_self_environ(cli, write_spec, monkeypatch):
    monkeypatch.setenv("SFSPEC_TEST_SECRET", SECRET)
    path = write_spec(CARTPOLE + "extends: /proc/self/environ\n")
    result = cli("validate", path)
    _refused(result, f"{path}:4:10:", "is not a YAML file")
    assert SECRET not in result.err


def test_extends_refuses_a_yaml_named_link_to_another_file(cli, write_spec, tmp_path):
    (tmp_path / "secrets.txt").write_text(f"{SECRET}: 1\n")
    os.symlink(tmp_path / "secrets.txt", tmp_path / "base.yaml")
    path = write_spec(CARTPOLE + "extends: base.yaml\n")
    result = cli("validate", path)
    _refused(result, f"{path}:4:10:", "base.yaml is not a YAML file")
    assert SECRET not in result.err


def test_extends_refuses_a_fifo_named_yaml_without_blocking(cli, write_spec, tmp_path):
    os.mkfifo(tmp_path / "base.yaml")  # opening it for reading would wait for a writer forever
    path = write_spec(CARTPOLE + "extends: base.yaml\n")
    _refused(cli("validate", path), f"{path}:4:10:", "base.yaml is not a regular file")


def test_extends_refuses_a_directory_named_yaml(cli, write_spec, tmp_path):
    (tmp_path / "base.yaml").mkdir()
    path = write_spec(CARTPOLE + "extends: base.yaml\n")
    _refused(cli("validate", path), f"{path}:4:10:", "base.yaml is not a regular file")


def test_extends_of_a_yaml_file_still_works(cli, write_spec, tmp_path):
    (tmp_path / "base.yml").write_text("train: {lr: 0.001}\n")
    assert cli("validate", write_spec(CARTPOLE + "extends: base.yml\n")).code == 0


# ---------------------------------------------------------------- A2: one budget for a spec and every file it extends


def _comments(size: int) -> str:
    """About ``size`` bytes of YAML comments: costs bytes, not values."""
    return "# filler\n" * (size // 9)


def _ones(count: int) -> str:
    """A flow list of ``count`` values."""
    return "[" + ", ".join(["1"] * count) + "]"


def test_extends_listing_one_base_forty_times_is_refused_before_reading_it(cli, write_spec, tmp_path):
    # 40 x 100 KB: 4 MB to parse if each entry were read (and each base fits under the per-file cap of old)
    (tmp_path / "b.yaml").write_text(CARTPOLE + _comments(100_000))
    path = write_spec("extends: [" + ", ".join(["b.yaml"] * 40) + "]\n")
    _refused(
        cli("validate", "--no-env", path),
        f"{path}:1:{11 + 8 * MAX_EXTENDS}: extends[{MAX_EXTENDS}]:",
        f"too many extends entries (40 here): a spec and the files it extends list at most {MAX_EXTENDS} in all",
    )


def test_extends_entries_are_counted_across_the_chain(cli, write_spec, tmp_path):
    for i in range(1, MAX_EXTENDS + 1):  # spec -> c1 -> c2 -> ... -> c17: 17 entries, one per file
        (tmp_path / f"c{i}.yaml").write_text(f"extends: c{i + 1}.yaml\ntrain: {{seed: {i}}}\n")
    (tmp_path / f"c{MAX_EXTENDS + 1}.yaml").write_text(CARTPOLE)
    path = write_spec("extends: c1.yaml\n")
    last = tmp_path / f"c{MAX_EXTENDS}.yaml"
    _refused(
        cli("validate", "--no-env", path),
        f"{last}:1:10: extends:",
        f"too many extends entries (1 here, {MAX_EXTENDS} in the files read before it)",
    )


def test_the_same_base_listed_twice_is_refused(cli, write_spec, tmp_path):
    (tmp_path / "b.yaml").write_text(CARTPOLE)
    path = write_spec("extends: [b.yaml, ./b.yaml]\n")
    _refused(cli("validate", "--no-env", path), f"{path}:1:19: extends[1]:", "./b.yaml is already listed at extends[0]")


def test_the_byte_limit_holds_for_the_whole_extends_chain(cli, write_spec, tmp_path):
    third = MAX_SPEC_BYTES * 2 // 5  # each file well under the limit, the three together over it
    (tmp_path / "c.yaml").write_text(CARTPOLE + _comments(third))
    (tmp_path / "b.yaml").write_text("extends: c.yaml\n" + _comments(third))
    path = write_spec("extends: b.yaml\n" + _comments(third))
    _refused(
        cli("validate", "--no-env", path),
        f"{tmp_path / 'b.yaml'}:1:10: extends: {tmp_path / 'c.yaml'} takes the spec past",
        f"{MAX_SPEC_BYTES // 1024} KiB in all, counting the files it extends",
    )


def test_a_base_larger_than_the_limit_is_refused_at_its_extends_line(cli, write_spec, tmp_path):
    (tmp_path / "big.yaml").write_text(CARTPOLE + _comments(MAX_SPEC_BYTES + 100))
    path = write_spec("train: {lr: 0.001}\nextends: big.yaml\n")
    _refused(
        cli("validate", "--no-env", path),
        f"{path}:2:10: extends: {tmp_path / 'big.yaml'}",
        f"is larger than {MAX_SPEC_BYTES // 1024} KiB: too big for a spec",
    )

def test_the_value_limit_holds_for_the_whole_extends_chain(cli, write_spec, tmp_path):
    many = MAX_VALUES * 3 // 5  # each base under the limit, the two together over it
    (tmp_path / "b.yaml").write_text(f"env: {{id: CartPole-v1, kwargs: {{b: {_ones(many)}}}}}\nmodel: {{}}\n")
    (tmp_path / "c.yaml").write_text(f"env: {{kwargs: {{c: {_ones(many)}}}}}\n")
    path = write_spec("extends: [b.yaml, c.yaml]\n")
    _refused(
        cli("validate", "--no-env", path),
        f"{tmp_path / 'c.yaml'}:1:",
        f"more than {MAX_VALUES:,} values in one spec (counting the files it extends)",
    )


def test_a_base_reused_by_two_bases_counts_its_values_each_time(cli, write_spec, tmp_path):
    many = MAX_VALUES * 3 // 5  # parsed once, but merged twice
    (tmp_path / "d.yaml").write_text(f"env: {{id: CartPole-v1, kwargs: {{d: {_ones(many)}}}}}\nmodel: {{}}\n")
    (tmp_path / "b.yaml").write_text("extends: d.yaml\n")
    (tmp_path / "c.yaml").write_text("extends: d.yaml\n")
    path = write_spec("extends: [b.yaml, c.yaml]\n")
    _refused(
        cli("validate", "--no-env", path),
        f"{tmp_path / 'c.yaml'}:1:10: extends:",
        f"takes the spec past {MAX_VALUES:,} values in all, counting each time a file is extended",
    )


def test_a_base_two_bases_extend_is_parsed_once_and_merged_in_order(write_spec, tmp_path, monkeypatch):
    (tmp_path / "d.yaml").write_text("env: {id: CartPole-v1, num_envs: 2}\nmodel: {}\ntrain: {lr: 0.1, seed: 1}\n")
    (tmp_path / "b.yaml").write_text("extends: d.yaml\ntrain: {lr: 0.2}\n")
    (tmp_path / "c.yaml").write_text("extends: d.yaml\ntrain: {seed: 3}\n")
    path = write_spec("extends: [b.yaml, c.yaml]\nenv: {num_envs: 4}\n")
    parsed: list[str] = []
    real_parse = loader.parse_yaml

    def counting_parse(text: str, source: str, *rest):
        parsed.append(source)
        return real_parse(text, source, *rest)

    monkeypatch.setattr(loader, "parse_yaml", counting_parse)
    loaded = pipeline.load(path)
    assert sorted(parsed) == sorted([path] + [str(tmp_path / name) for name in ("b.yaml", "c.yaml", "d.yaml")])
    # c re-applies d's lr over b's: later bases win, whatever they inherit
    assert loaded.data["train"] == {"lr": 0.1, "seed": 3}
    assert loaded.data["env"] == {"id": "CartPole-v1", "num_envs": 4}
    assert str(loaded.source_map.locate(("train", "seed"))) == f"{tmp_path / 'c.yaml'}:2:15"
    assert str(loaded.source_map.locate(("env", "num_envs"))) == f"{path}:2:17"
    assert "extends" not in loaded.data and not any(p[:1] == ("extends",) for p in loaded.source_map.values)


def test_a_two_level_extends_still_merges_and_points_into_each_file(cli, write_spec, tmp_path):
    (tmp_path / "base.yaml").write_text("env: {id: CartPole-v1}\nmodel:\n  encoder: [linear: 16, tanh]\n")
    (tmp_path / "mid.yaml").write_text("extends: base.yaml\ntrain: {lr: 0.001, gamma: 0.9}\n")
    ok = write_spec("extends: mid.yaml\ntrain: {rollout: 32}\n", "ok.yaml")
    assert cli("validate", ok).code == 0
    loaded = pipeline.load(ok)
    assert loaded.data["train"] == {"lr": 0.001, "gamma": 0.9, "rollout": 32}
    assert loaded.files == [ok, str(tmp_path / "mid.yaml"), str(tmp_path / "base.yaml")]
    (tmp_path / "typo.yaml").write_text("extends: base.yaml\ntrain: {lr: 0.001, gama: 0.9}\n")
    bad = write_spec("extends: typo.yaml\nmodel: {encoder: [linear: 16, tanh, conv9]}\n", "bad.yaml")
    result = cli("validate", "--no-env", bad)
    _refused(result, f"{tmp_path / 'typo.yaml'}:2:20: train.gama: unknown key 'gama'", "(did you mean 'gamma'?)")
    assert f"{bad}:2:37: model.encoder[2]: unknown layer 'conv9'" in result.err


def test_a_syntax_error_echoes_no_other_line_of_the_file(cli, write_spec):
    path = write_spec(f"password: {SECRET}\ntoken: {SECRET}x\nbroken: [1, 2\nmore: {SECRET}y\n")
    result = cli("validate", path)
    _refused(result, f"{path}:3:9:", "YAML syntax")
    assert SECRET not in result.err


def test_a_multi_line_value_is_not_echoed(cli, write_spec):
    path = write_spec("env: |\n  pw=s3cr\n  tok=k3y\nmodel: {}\n")  # short enough to have been shown whole
    result = cli("validate", "--no-env", path)
    _refused(result, f"{path}:1:6: env:", "expected a mapping, got a string")
    assert "s3cr" not in result.err and "k3y" not in result.err


# ---------------------------------------------------------------- B: hostile sizes


def _laughs(levels: int, width: int = 10) -> str:
    lines = ["    l0: &l0 [lol]"]
    for i in range(1, levels + 1):
        lines.append(f"    l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "env:\n  id: CartPole-v1\n  kwargs:\n" + "\n".join(lines) + "\nmodel: {}\n"


def test_billion_laughs_aliases_are_refused(cli, write_spec):
    path = write_spec(_laughs(9))  # 10^9 values once expanded, from about 600 bytes
    assert os.path.getsize(path) < 1000
    _refused(cli("validate", "--no-env", path), f"{path}:", f"expands to more than {MAX_VALUES:,} values")


def test_a_hundred_thousand_aliased_values_are_refused(cli, write_spec):
    path = write_spec(_laughs(5))  # 10^5 values: slow, then accepted, before the cap
    _refused(cli("validate", "--no-env", path), f"{path}:", "YAML aliases '*name' repeat whole subtrees")


def test_a_recursive_alias_is_refused(cli, write_spec):
    path = write_spec("env: {id: CartPole-v1, kwargs: &a [*a]}\nmodel: {}\n")
    _refused(cli("validate", "--no-env", path), f"{path}:1:", f"nested more than {MAX_DEPTH} levels deep")


def test_deep_nesting_is_refused_not_a_recursion_error(cli, write_spec):
    path = write_spec("env: {id: CartPole-v1}\nmodel: {}\nx: " + "[" * 5000 + "]" * 5000 + "\n")
    _refused(cli("validate", path), f"{path}:3:", f"nested more than {MAX_DEPTH} levels deep")


def test_nesting_within_the_limit_is_validated(cli, write_spec):
    layers = "tanh"
    for _ in range(25):  # 25 nested residual blocks: 50 levels of YAML
        layers = "{residual: [" + layers + "]}"
    assert cli("validate", write_spec(f"env: {{id: CartPole-v1}}\nmodel: {{encoder: [{layers}]}}\n")).code == 0


def test_a_spec_larger_than_the_limit_is_refused(cli, write_spec):
    path = write_spec(CARTPOLE + ("# filler\n" * (MAX_SPEC_BYTES // 9 + 1)))
    _refused(cli("validate", path), path, f"is larger than {MAX_SPEC_BYTES // 1024} KiB: too big for a spec")


def test_too_many_values_are_refused(cli, write_spec):
    items = ", ".join(["1"] * (MAX_VALUES + 1))
    path = write_spec(f"env: {{id: CartPole-v1, kwargs: {{x: [{items}]}}}}\nmodel: {{}}\n")
    _refused(cli("validate", "--no-env", path), f"{path}:", f"more than {MAX_VALUES:,} values in one spec")


REPEAT_A_BILLION = """
env: {id: CartPole-v1}
model:
  encoder:
    - repeat: {times: 1000000000, layers: [linear: 8, tanh]}
"""


@pytest.mark.parametrize("no_env", [True, False], ids=["schema only", "with the env"])
def test_repeat_a_billion_times_is_refused_before_expanding(cli, write_spec, no_env):
    path = write_spec(REPEAT_A_BILLION)
    result = cli("validate", *(["--no-env"] if no_env else []), path)
    _refused(result, f"{path}:4:23: model.encoder[0].repeat.times:", f"more than the limit of {MAX_LAYERS:,}")


def test_nested_repeats_point_at_the_inner_one(cli, write_spec):
    path = write_spec("""
        env: {id: CartPole-v1}
        model:
          encoder:
            - residual: [repeat: {times: 1000000000, layers: [linear: 4]}]
        """)
    _refused(cli("validate", path), f"{path}:4:34: model.encoder[0].residual[0].repeat.times:", "layers")


def test_plan_refuses_a_repeat_a_billion_times_built_from_python(cli):
    from sfspec.compiler.plan import plan_model

    spec = {"env": {"id": "x"}, "model": {"encoder": [{"repeat": {"times": 10**9, "layers": ["tanh"]}}]}}
    box = spaces.Box(-1, 1, (4,))
    with pytest.raises(SpecError, match="more than the limit"):
        plan_model(spec, box, spaces.Discrete(2), SourceMap())


@pytest.fixture
def sixteen_gib(monkeypatch):
    """A machine with 16 GiB, whatever this one has."""
    monkeypatch.setattr(budget, "machine_memory", lambda: (16 * 2**30, "of physical memory (test)"))


BILLION_WIDE = """
env: {id: CartPole-v1}
model:
  encoder: [linear: 1000000000, tanh]
"""


@pytest.mark.parametrize("command", ["validate", "summary"])
def test_a_billion_wide_linear_layer_is_refused_with_the_estimate(cli, write_spec, sixteen_gib, command):
    path = write_spec(BILLION_WIDE)
    result = cli(command, path)
    _refused(result, f"{path}:3:21: model.encoder[0].linear: training this spec needs at least", "parameters")
    assert "more than this machine's 16.0 GiB of physical memory (test)" in result.err
    assert "13,000,000,003 parameters" in result.err  # two 4 -> 1e9 encoders (5e9 each), 2e9+2, 1e9+1


def test_train_refuses_a_billion_wide_linear_layer_before_building(cli, write_spec, sixteen_gib, tmp_path):
    result = cli("train", write_spec(BILLION_WIDE), "--run-dir", str(tmp_path / "run"), "-q")
    _refused(result, "model.encoder[0].linear:", "needs at least")
    assert not (tmp_path / "run").exists()


def test_a_trillion_wide_layer_exceeds_this_machine(cli, write_spec):
    path = write_spec("env: {id: CartPole-v1}\nmodel:\n  encoder: [linear: 1000000000000]\n")
    result = cli("validate", path)
    _refused(result, f"{path}:3:21: model.encoder[0].linear:", "more than this machine's")
    assert "os.sysconf" in result.err or "/proc/meminfo" in result.err or "memory.max" in result.err


def test_a_trillion_envs_are_refused_at_num_envs(cli, write_spec, sixteen_gib, tmp_path):
    path = write_spec("env: {id: CartPole-v1, num_envs: 1000000000000}\nmodel: {encoder: [linear: 8]}\n")
    _refused(cli("validate", path), f"{path}:1:34: env.num_envs:", "x 1,000,000,000,000 envs")
    result = cli("train", path, "--run-dir", str(tmp_path / "run"), "-q")
    _refused(result, f"{path}:1:34: env.num_envs:", "needs at least")


def test_a_huge_rollout_is_refused_at_train_rollout(cli, write_spec, sixteen_gib):
    path = write_spec(CARTPOLE + "train: {rollout: 100000000000}\n")
    _refused(cli("validate", path), f"{path}:4:18: train.rollout:", "a rollout of 100,000,000,000 steps x 8 envs")


def test_export_of_a_bare_spec_refuses_a_billion_wide_layer(cli, write_spec, sixteen_gib, tmp_path):
    result = cli("export", write_spec(BILLION_WIDE), "--out", str(tmp_path / "bundle"))
    _refused(result, "model.encoder[0].linear:", "parameters need")


PARAM_SPECS = {
    "mlp": "env: {id: CartPole-v1}\nmodel: {encoder: [mlp: [32, 16]], decoder: [linear: 8, layer_norm]}",
    "gru": "env: {id: CartPole-v1}\nmodel: {encoder: [linear: 16], core: [gru: {hidden: 8, layers: 2}]}",
    "lstm": "env: {id: Pendulum-v1}\nmodel: {encoder: [linear: 16], core: [lstm: 8]}",
    "conv": "env: {id: SpaceTest/Image-v0}\nmodel: {encoder: [conv2d: {channels: 4, kernel: [3, 5]}, flatten]}",
    "nature": "env: {id: SpaceTest/Image-v0}\nmodel: {share_weights: true, encoder: [nature_cnn: 32]}",
    "impala": "env: {id: SpaceTest/Image-v0}\nmodel: {encoder: [impala_cnn: {channels: [4, 8]}]}",
    "attention": (
        "env: {id: SpaceTest/Image-v0}\nmodel: {encoder: [conv2d: {channels: 8, kernel: 8, stride: 8}, to_tokens,"
        " self_attention: 2, token_mean, repeat: {times: 3, layers: [residual: [linear: 8]]}]}"
    ),
    "branches": (
        "env: {id: SpaceTest/Dict-v0}\nmodel:\n  encoder: {inputs: {proprio: [linear: 8]}, layers: [linear: 4]}\n"
        "  critic: {observe: [proprio, privileged]}\n  action: {std: {mode: state_dependent}}"
    ),
    "embedding": (
        "env: {id: SpaceTest/Nested-v0}\nmodel:\n  preprocess: {robot.cell: {discrete: index}}\n"
        "  encoder: {inputs: {robot.cell: [embedding: {num: 7, dim: 3}, flatten]}}"
    ),
}


@pytest.mark.parametrize("name", list(PARAM_SPECS))
def test_the_parameter_estimate_matches_the_built_model(write_spec, name):
    loaded = pipeline.load(write_spec(PARAM_SPECS[name]))
    checked = pipeline.check(loaded)
    model = pipeline.compile_spec(loaded, checked.obs_space, checked.action_space)
    built = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert count_params(checked.plan).total == built
    assert checked.memory.params.total == built


def test_check_memory_is_callable_on_a_spec_and_spaces():
    spec = {"env": {"id": "x", "num_envs": 4}, "model": {"encoder": [{"linear": 10}]}, "train": {"rollout": 16}}
    estimate = check_memory(spec, spaces.Box(0, 255, (6,), "uint8"), spaces.Discrete(3), None, SourceMap())
    assert estimate.obs_bytes == 6
    assert estimate.env_bytes == 4 * 6
    assert estimate.rollout_bytes == 16 * 4 * (6 + 4 * (1 + budget.STEP_FLOATS))
    per_stack = 6 * 10 + 10
    assert estimate.params.total == 2 * per_stack + (10 * 3 + 3) + (10 + 1)


def test_check_memory_refuses_from_python_with_a_position(monkeypatch):
    monkeypatch.setattr(budget, "machine_memory", lambda: (2**30, "of physical memory (test)"))
    smap = SourceMap()
    loaded = LoadedSpec({"env": {"id": "x", "num_envs": 10**9}, "model": {}}, smap, "s.yaml")
    with pytest.raises(SpecError, match=r"env.num_envs: training this spec needs at least .* 1.0 GiB") as info:
        check_memory(loaded.data, spaces.Box(-1, 1, (4,)), spaces.Discrete(2), None, smap)
    assert info.value.issues[0].path == ("env", "num_envs")


def test_machine_memory_says_where_it_comes_from():
    found = budget.machine_memory()
    assert found is not None and found[0] > 2**20
    assert any(word in found[1] for word in ("os.sysconf", "/proc/meminfo", "memory.max"))


# ---------------------------------------------------------------- C: tracebacks where a message belongs


def test_a_nul_byte_is_reported_at_its_position(cli, tmp_path):
    path = tmp_path / "nul.yaml"
    path.write_bytes(b"env: {id: CartPole-v1}\nmodel: {}\ntrain: {lr: 1\x00}\n")
    _refused(cli("validate", str(path)), f"{path}:3:14:", "a NUL byte")


def test_a_binary_file_is_not_utf8(cli, tmp_path):
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"env: {id: CartPole-v1}\n\xff\xfe\n")
    _refused(cli("validate", str(path)), f"{path}:2:1:", "not UTF-8 text")


def test_a_5000_digit_integer_is_reported(cli, write_spec):
    path = write_spec("env: {id: CartPole-v1}\nmodel: {}\ntrain: {steps: " + "9" * 5000 + "}\n")
    _refused(cli("validate", path), f"{path}:3:16: train.steps:", "a number with 5,000 digits is too long")


def test_an_integer_beyond_64_bits_is_reported(cli, write_spec):
    path = write_spec(CARTPOLE + "train: {steps: 100000000000000000000000}\n")
    _refused(cli("validate", "--no-env", path), f"{path}:4:16: train.steps:", "does not fit in 64 bits")


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
        ("train: {lr: .nan}", "4:13: train.lr", "NaN"),
        ("train: {gamma: .NaN}", "4:16: train.gamma", "NaN"),
        ("train: {max_grad_norm: .inf}", "4:24: train.max_grad_norm", "infinity"),
        ("train: {value_clip: 1e999}", "4:21: train.value_clip", "infinity"),
        ("train: {entropy_coef: .inf}", "4:23: train.entropy_coef", "infinity"),
        ("export: {opset: 18}\nmodel: {init: {gain: .inf}}", "3:22: model.init.gain", "infinity"),
    ],
)
def test_nan_and_infinity_are_refused_as_hyperparameters(cli, write_spec, text, where, what):
    base = CARTPOLE.replace("model:\n  encoder: [linear: 16, tanh]\n", "") if "model:" in text else CARTPOLE
    path = write_spec(base + text + "\n")
    _refused(cli("validate", "--no-env", path), f"{path}:{where}:", f"must be a finite number, got {what}")


def test_env_kwargs_may_hold_infinity_but_not_nan(cli, write_spec):
    ok = write_spec("env: {id: CartPole-v1, kwargs: {limit: .inf}}\nmodel: {}\n", "ok.yaml")
    assert cli("validate", "--no-env", ok).code == 0
    bad = write_spec("env: {id: CartPole-v1, kwargs: {limit: .nan}}\nmodel: {}\n", "bad.yaml")
    _refused(cli("validate", "--no-env", bad), f"{bad}:1:40: env.kwargs.limit:", "got NaN")


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
        ("train: {gamma: .inf}", "4:16: train.gamma", "infinity"),  # also above gamma's bound of 1
        ("train: {lr: .nan}", "4:13: train.lr", "NaN"),
        ("train: {clip: -.inf}", "4:15: train.clip", "infinity"),  # also below clip's bound of 0
    ],
)
def test_a_non_finite_number_out_of_bounds_is_one_error_not_two(cli, write_spec, text, where, what):
    path = write_spec(CARTPOLE + text + "\n")
    result = cli("validate", "--no-env", path)
    _refused(result, f"{path}:{where}: must be a finite number, got {what}", "sfspec: 1 problem found")
    assert "must be <" not in result.err and "must be >" not in result.err, result.err


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lr=.nan", "--set train.lr=.nan: train.lr: must be a finite number, got NaN"),
        ("train.lr=-.inf", "--set train.lr=-.inf: train.lr: must be a finite number, got infinity"),
        ("train.lr=inf", "got a string 'inf' (settings must be finite numbers: NaN and infinity are not allowed)"),
        ("train.lr=nan", "got a string 'nan' (settings must be finite numbers"),
    ],
)
def test_set_refuses_nan_and_infinity(cli, write_spec, override, message):
    result = cli("validate", write_spec(CARTPOLE), "--set", override)
    _refused(result, "--set", message)


def test_set_refuses_a_path_nested_too_deep(cli, write_spec):
    result = cli("validate", write_spec(CARTPOLE), "--set", "env.kwargs" + ".x" * 3000 + "=1")
    _refused(result, "env.kwargs.x: the path is more than", f"{MAX_DEPTH} levels deep")


def test_set_refuses_a_5000_digit_index(cli, write_spec):
    result = cli("validate", write_spec(CARTPOLE), "--set", "model.encoder[" + "9" * 5000 + "]=1")
    _refused(result, "--set model.encoder[", "index 999999999999999999... is too large")


# ---------------------------------------------------------------- D: YAML syntax in plain words


def test_an_unclosed_bracket_is_reported_where_it_opens(cli, write_spec):
    path = write_spec("""
        env: {id: CartPole-v1}
        model:
          encoder: [linear: 64,
            tanh
        train: {}
        """)
    result = cli("validate", path)
    _refused(result, f"{path}:3:12: YAML syntax: this '[' is never closed:", f"found ':' at {path}:5:6")
    assert "<root>" not in result.err


def test_an_unclosed_bracket_at_the_end_of_the_file(cli, write_spec):
    path = write_spec("env: {id: CartPole-v1}\nmodel:\n  encoder: [linear: 64, tanh\n")
    _refused(cli("validate", path), f"{path}:3:12:", f"never closed: found the end of the file at {path}:4:1")


def test_a_bad_item_inside_brackets_is_reported_where_it_is(cli, write_spec):
    path = write_spec("env: {id: a: b}\nmodel: {}\n")
    _refused(cli("validate", path), f"{path}:1:12:", f"inside the '{{...}}' that opens at {path}:1:6")


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        (
            "env:\n    id: CartPole-v1\n  num_envs: 3\nmodel: {}\n",
            "3:3",
            "bad indentation: found a new 'key: value' that does not line up with the block that starts at {p}:1:1",
        ),
        (
            "model:\n  encoder:\n    - linear: 64\n   - tanh\nenv: {id: x}\n",
            "4:4",
            "bad indentation: found a list item '- ' that does not line up with the block that starts at {p}:2:3",
        ),
        ("env:\n\tid: CartPole-v1\nmodel: {}\n", "2:1", "a tab character: YAML indents with spaces only"),
        ("env:\n  id: CartPole-v1\n  \tnum_envs: 3\nmodel: {}\n", "3:3", "a tab character"),
        ("env:\n  id: CartPole-v1\n   num_envs: 4\nmodel: {}\n", "3:12", "check the indentation"),
        ("env:\n  id: x\n  num_envs\n  kwargs: {}\nmodel: {}\n", "3:3", "this line has no ':'"),
        ('env: {id: "CartPole-v1}\nmodel: {}\n', "1:11", "this quote is never closed"),
        ("env: *base\nmodel: {}\n", "1:6", "alias *base refers to no anchor"),
        ("env: {id: x}\nmodel: {}\n---\ntrain: {}\n", "3:1", "a spec is one YAML document"),
    ],
)
def test_yaml_syntax_errors_in_plain_words(cli, write_spec, text, where, message):
    path = write_spec(text)
    result = cli("validate", path)
    _refused(result, f"{path}:{where}: YAML syntax: ", message.format(p=path))
    for raw in ("<block end>", "<block mapping start>", "cannot start any token", "<root>"):
        assert raw not in result.err


# ---------------------------------------------------------------- E: other tools' names


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("train: {learning_rate: 1}", "5:9: train.learning_rate", "unknown key 'learning_rate' (sfspec calls it 'lr')"),
        ("train: {n_steps: 64}", "5:9: train.n_steps", "(sfspec calls it 'rollout': steps per environment per update)"),
        ("train: {n_epochs: 4}", "5:9", "(sfspec calls it 'epochs')"),
        ("train: {update_epochs: 4}", "5:9", "(sfspec calls it 'epochs')"),
        ("train: {num_learning_epochs: 4}", "5:9", "(sfspec calls it 'epochs')"),
        ("train: {learning_epochs: 4}", "5:9", "(sfspec calls it 'epochs')"),
        ("train: {batch_size: 64}", "5:9", "(sfspec calls it 'minibatches': sfspec's minibatches is how many"),
        ("train: {num_minibatches: 4}", "5:9", "(sfspec calls it 'minibatches')"),
        ("train: {num_mini_batches: 4}", "5:9", "(sfspec calls it 'minibatches')"),
        ("train: {num_steps: 64}", "5:9", "(sfspec calls it 'rollout'"),
        ("train: {total_timesteps: 1000}", "5:9", "(sfspec calls it 'steps'"),
        ("train: {ent_coef: 0.01}", "5:9", "(sfspec calls it 'entropy_coef')"),
        ("train: {vf_coef: 0.5}", "5:9", "(sfspec calls it 'value_coef')"),
        ("train: {clip_range: 0.2}", "5:9", "(sfspec calls it 'clip')"),
        ("train: {clip_param: 0.2}", "5:9", "(sfspec calls it 'clip')"),
        ("train: {lam: 0.95}", "5:9", "(sfspec calls it 'gae_lambda')"),
        ("train: {grad_norm: 1.0}", "5:9", "(sfspec calls it 'max_grad_norm')"),
        ("train: {num_envs: 4}", "5:9: train.num_envs", "'num_envs' in train (it belongs in env: 'env.num_envs')"),
        ("env_id: CartPole-v1", "5:1: env_id", "(sfspec calls it 'env.id')"),
        ("train: {env_name: x}", "5:9", "(sfspec calls it 'env.id')"),
        ("learning_rate: 0.1", "5:1", "(sfspec calls it 'train.lr')"),
        ("max_grad_norm: 1.0", "5:1", "at the top level (it belongs in train: 'train.max_grad_norm')"),
        ("seed: 3", "5:1: seed", "(it belongs in train: 'train.seed')"),
        ("model: {seed: 3}", "4:9: model.seed", "in model (it belongs in train: 'train.seed')"),
    ],
)
def test_other_tools_names_get_ours(cli, write_spec, text, where, message):
    base = "env: {id: CartPole-v1}\n" + ("" if text.startswith("model") else "model: {}\n") + "\n\n"
    base = base if not text.startswith("model") else "env: {id: CartPole-v1}\n\n\n"
    path = write_spec(base + text + "\n")
    _refused(cli("validate", "--no-env", path), f"{path}:{where}:", message)


def test_a_layer_argument_gets_no_other_tool_hint(cli, write_spec):
    path = write_spec("env: {id: CartPole-v1}\nmodel: {encoder: [linear: {features: 4, seed: 1}]}\n")
    result = cli("validate", "--no-env", path)
    _refused(result, f"{path}:", "unknown argument 'seed' for linear")
    assert "train.seed" not in result.err


# ---------------------------------------------------------------- F: one mistake, one error


def test_shared_weights_with_a_bad_observe_key_is_one_error(cli, write_spec):
    path = write_spec("""
        env: {id: SpaceTest/Dict-v0}
        model:
          share_weights: true
          actor: {observe: [propio]}
        """)
    result = cli("validate", path)
    _refused(result, f"{path}:4:21: model.actor.observe[0]:", "no observation key 'propio' (did you mean 'proprio'?)")
    assert "1 problem found" in result.err
    assert "shared weights need one set" not in result.err


def test_shared_weights_with_an_empty_observe_is_one_error(cli, write_spec):
    path = write_spec("env: {id: SpaceTest/Dict-v0}\nmodel: {share_weights: true, actor: {observe: []}}\n")
    result = cli("validate", path)
    _refused(result, "model.actor.observe: observes nothing", "1 problem found")


def test_a_bad_observe_key_does_not_also_blame_the_encoder_branch(cli, write_spec):
    path = write_spec("""
        env: {id: SpaceTest/Dict-v0}
        model:
          encoder: {inputs: {proprio: [linear: 8]}}
          actor: {observe: [propio, camera]}
        """)
    result = cli("validate", path)
    _refused(result, "model.actor.observe[0]: no observation key 'propio'", "1 problem found")
    assert "does not observe" not in result.err


def test_a_layer_failing_for_actor_and_critic_is_one_error(cli, write_spec):
    path = write_spec("""
        env: {id: SpaceTest/Dict-v0}
        model:
          encoder: [conv2d: {channels: 2, kernel: 3}]
          actor: {observe: [proprio]}
          critic: {observe: [proprio, privileged]}
        """)
    result = cli("validate", path)
    _refused(result, f"{path}:3:13: model.encoder[0]: conv2d cannot take input shape (12,)", "1 problem found")


# ---------------------------------------------------------------- speed: validate stays torch-free


def test_validate_of_hostile_specs_does_not_import_torch(tmp_path):
    (tmp_path / "big.yaml").write_text(BILLION_WIDE)
    (tmp_path / "rep.yaml").write_text(REPEAT_A_BILLION)
    code = textwrap.dedent(f"""
        import sys
        from sfspec.cli import main
        code = main(['validate', {str(tmp_path / 'big.yaml')!r}, {str(tmp_path / 'rep.yaml')!r}])
        assert 'torch' not in sys.modules, 'torch was imported'
        sys.exit(code)
        """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert "repeat.times" in result.stderr
