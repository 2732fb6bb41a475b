"""Broken specs: every mistake is reported at its position with a useful message, exit 2, no traceback."""

from __future__ import annotations

import pytest

GOOD = """
env:
  id: CartPole-v1
model:
  encoder:
    - linear: 64
    - tanh
"""

# (name, spec text, expected 'line:col', expected message fragment)
CASES = [
    (
        "top-level typo",
        """
     env: {id: CartPole-v1}
     modle: {}
     """,
        "2:1",
        "unknown key 'modle' (did you mean 'model'?)",
    ),
    (
        "env key typo",
        """
     env:
       id: CartPole-v1
       num_env: 4
     model: {}
     """,
        "3:3",
        "env.num_env: unknown key 'num_env' (did you mean 'num_envs'?)",
    ),
    (
        "missing env id",
        """
     env: {num_envs: 4}
     model: {}
     """,
        "1:6",
        "env: missing required key 'id'",
    ),
    (
        "missing model",
        """
     env: {id: CartPole-v1}
     """,
        "1:1",
        "missing required key 'model'",
    ),
    (
        "unknown layer",
        """
     env: {id: CartPole-v1}
     model:
       encoder:
         - linear: 64
         - conv2: {channels: 3}
     """,
        "5:7",
        "model.encoder[1]: unknown layer 'conv2' (did you mean 'conv2d'?)",
    ),
    (
        "bare layer typo",
        """
     env: {id: CartPole-v1}
     model:
       encoder: [linear: 64, tahn]
     """,
        "3:25",
        "unknown layer 'tahn' (did you mean 'tanh'?)",
    ),
    (
        "layer argument typo",
        """
     env: {id: CartPole-v1}
     model:
       encoder:
         - conv2d: {chanels: 8, kernel: 3}
     """,
        "4:16",
        "unknown argument 'chanels' for conv2d (did you mean 'channels'?)",
    ),
    (
        "layer needs arguments",
        """
     env: {id: CartPole-v1}
     model:
       encoder:
         - linear
     """,
        "4:7",
        "layer 'linear' needs arguments (features)",
    ),
    (
        "two layers in one item",
        """
     env: {id: CartPole-v1}
     model:
       encoder:
         - {linear: 64, tanh: null}
     """,
        "4:7",
        "names exactly one layer, got 2",
    ),
    (
        "wrong argument type",
        """
     env: {id: CartPole-v1}
     model:
       encoder:
         - linear: sixty-four
     """,
        "4:15",
        "expected an integer, got a string 'sixty-four'",
    ),
    (
        "negative size",
        """
     env: {id: CartPole-v1}
     model:
       encoder:
         - linear: -3
     """,
        "4:15",
        "must be >= 1, got -3",
    ),
    (
        "recurrent layer in encoder",
        """
     env: {id: CartPole-v1}
     model:
       encoder:
         - lstm: 64
     """,
        "4:7",
        "'lstm' is a recurrent layer, allowed only in model.core",
    ),
    (
        "recurrent layer in decoder",
        """
     env: {id: CartPole-v1}
     model:
       decoder:
         - gru: {hidden: 64}
     """,
        "4:7",
        "'gru' is a recurrent layer, allowed only in model.core",
    ),
    (
        "enum typo",
        """
     env: {id: CartPole-v1}
     model:
       init: {weights: orthogonl}
     """,
        "3:19",
        "'orthogonl' is not one of",
    ),
    (
        "train key typo",
        """
     env: {id: CartPole-v1}
     model: {}
     train:
       gama: 0.9
     """,
        "4:3",
        "train.gama: unknown key 'gama' (did you mean 'gamma'?)",
    ),
    (
        "train wrong type",
        """
     env: {id: CartPole-v1}
     model: {}
     train: {lr: fast}
     """,
        "3:13",
        "train.lr: expected a number, got a string 'fast'",
    ),
    (
        "decoder wrong type",
        """
     env: {id: CartPole-v1}
     model:
       decoder: 5
     """,
        "3:12",
        "expected a layer list or {custom: name, params: {...}}",
    ),
    (
        "unknown custom encoder",
        """
     env: {id: CartPole-v1}
     model:
       encoder: {custom: sf_encodr}
     """,
        "3:21",
        "unknown encoder 'sf_encodr' (did you mean 'sf_encoder'?)",
    ),
    (
        "custom params checked by the plugin's schema",
        """
     env: {id: CartPole-v1}
     model:
       encoder: {custom: sf_encoder, params: {hiden: 3}}
     """,
        "3:42",
        "unknown key 'hiden' (did you mean 'hidden'?)",
    ),
    (
        "shape: linear on an image",
        """
     env: {id: SpaceTest/Image-v0}
     model:
       encoder:
         - linear: 64
     """,
        "4:7",
        "linear cannot take input shape (3, 64, 64): expects a vector (features,) or tokens (tokens, features), "
        "got an image (C, H, W); add '- flatten' before it",
    ),
    (
        "shape: kernel larger than input",
        """
     env: {id: SpaceTest/Image-v0}
     model:
       encoder:
         - conv2d: {channels: 8, kernel: 8, stride: 4}
         - conv2d: {channels: 8, kernel: 32}
     """,
        "5:7",
        "kernel 32 is larger than the input (15, padding 0)",
    ),
    (
        "shape: conv on a vector",
        """
     env: {id: CartPole-v1}
     model:
       encoder:
         - conv2d: {channels: 8, kernel: 3}
     """,
        "4:7",
        "conv2d needs an image observation",
    ),
    (
        "shape: encoder must end in a vector",
        """
     env: {id: SpaceTest/Image-v0}
     model:
       encoder:
         - conv2d: {channels: 8, kernel: 8, stride: 4}
     """,
        "4:5",
        "the encoder must end in a vector, but its output has shape (8, 15, 15): end it with '- flatten'",
    ),
    (
        "shape: residual changes the shape",
        """
     env: {id: CartPole-v1}
     model:
       encoder:
         - residual: [linear: 8]
     """,
        "4:7",
        "its layers must keep the shape for the skip connection",
    ),
    (
        "shape: attention heads",
        """
     env: {id: SpaceTest/Image-v0}
     model:
       encoder:
         - conv2d: {channels: 6, kernel: 8, stride: 8}
         - to_tokens
         - self_attention: 4
         - token_mean
     """,
        "6:7",
        "6 features do not split into 4 heads",
    ),
    (
        "Box-only option on a Discrete action",
        """
     env: {id: CartPole-v1}
     model:
       action:
         std: {init: 0.5}
     """,
        "4:5",
        "'std' applies to Box actions; CartPole-v1's action space is Discrete(2)",
    ),
    (
        "tanh bounds on an unbounded Box",
        """
     env: {id: SpaceTest/Unbounded-v0}
     model:
       action: {bounds: tanh}
     """,
        "3:20",
        "tanh needs finite bounds",
    ),
    (
        "observed key the env lacks",
        """
     env: {id: SpaceTest/Dict-v0}
     model:
       critic:
         observe: [camera, proprio, privilegd]
     """,
        "4:32",
        "no observation key 'privilegd' (did you mean 'privileged'?)",
    ),
    (
        "encoder branch for a missing key",
        """
     env: {id: SpaceTest/Dict-v0}
     model:
       encoder:
         inputs:
           camra: [flatten]
     """,
        "5:7",
        "no observation key 'camra' (did you mean 'camera'?)",
    ),
    (
        "shared weights with different observations",
        """
     env: {id: SpaceTest/Dict-v0}
     model:
       share_weights: true
       actor: {observe: [proprio]}
       critic: {observe: [proprio, privileged]}
     """,
        "3:18",
        "shared weights need one set of observations",
    ),
    (
        "mask on a Box action",
        """
     env: {id: SpaceTest/Dict-v0}
     model:
       action: {mask: proprio}
     """,
        "3:18",
        "action masks apply to discrete actions",
    ),
    (
        "unknown environment",
        """
     env: {id: CartPol-v1}
     model: {}
     """,
        "1:11",
        "unknown environment 'CartPol-v1' (did you mean 'CartPole-v1'?)",
    ),
    (
        "env id naming a module",
        """
     env: {id: "os:Evil-v0"}
     model: {}
     """,
        "1:11",
        "names the Python module 'os'; a spec never imports code",
    ),
    (
        "YAML syntax error",
        """
     env: {id: CartPole-v1
     model: {}
     """,
        "1:6",
        "YAML syntax: this '{' is never closed: found ':' at",
    ),
    (
        "python tag",
        """
     env: !!python/object/apply:os.system ["echo hacked"]
     model: {}
     """,
        "1:6",
        "tag '!!python/object/apply:os.system' is not allowed: a spec is plain data",
    ),
    (
        "duplicate key",
        """
     env: {id: CartPole-v1}
     model: {}
     env: {id: Acrobot-v1}
     """,
        "3:1",
        "duplicate key 'env' (first defined at line 1)",
    ),
    (
        "non-mapping root",
        """
     - env
     - model
     """,
        "1:1",
        "the spec must be a mapping, not a list",
    ),
    ("empty file", "\n", "1:1", "the spec is empty"),
    (
        "preprocess for a missing key",
        """
     env: {id: CartPole-v1}
     model:
       preprocess: {image: {layout: channels_last}}
     """,
        "3:15",
        "no observation key 'image'",
    ),
]


@pytest.mark.parametrize(("name", "text", "position", "message"), CASES, ids=[c[0] for c in CASES])
def test_broken_spec_is_reported_at_its_position(cli, write_spec, name, text, position, message):
    path = write_spec(text)
    result = cli("validate", path)
    assert result.code == 2, result
    assert "Traceback" not in result.err
    assert f"{path}:{position}:" in result.err, result.err
    assert message in result.err, result.err


def test_there_are_at_least_thirty_distinct_mistakes():
    assert len({c[0] for c in CASES}) >= 30


def test_every_error_is_reported_not_only_the_first(cli, write_spec):
    path = write_spec("""
        env: {id: CartPole-v1, num_env: 2}
        model:
          encoder: [linear: 64, tahn]
        train: {gama: 0.9, lr: fast}
        """)
    result = cli("validate", path)
    assert result.code == 2
    lines = [line for line in result.err.splitlines() if line.startswith(path)]
    assert len(lines) == 4, result.err
    assert [line.split(":")[1] for line in lines] == ["1", "3", "4", "4"]  # in file order
    assert "4 problems found" in result.err


def test_extends_cycle_names_the_chain(cli, tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\nenv: {id: CartPole-v1}\nmodel: {}\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    result = cli("validate", str(tmp_path / "a.yaml"))
    assert result.code == 2
    assert "extends cycle" in result.err
    assert "a.yaml -> " in result.err and "b.yaml -> " in result.err


def test_extends_missing_file_points_at_the_extends_line(cli, write_spec):
    path = write_spec("env: {id: CartPole-v1}\nmodel: {}\nextends: nothere.yaml\n")
    result = cli("validate", path)
    assert result.code == 2
    assert f"{path}:3:10: extends: file not found: " in result.err


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lrr=3e-4", "--set train.lrr=3e-4: train.lrr: unknown key 'lrr' (did you mean 'lr'?)"),
        ("model.encoder[5].linear=8", "index 5 is out of range: 'model.encoder' has 2 items"),
        ("train.lr=[1", "YAML syntax"),
        ("trainlr", "expected PATH=VALUE"),
        ("env.id.x=1", "'env.id' is a string, it has no key 'x'"),
        ("train.lr=fast", "--set train.lr=fast: train.lr: expected a number, got a string 'fast'"),
    ],
)
def test_bad_set_override(cli, write_spec, override, message):
    path = write_spec(GOOD)
    result = cli("validate", path, "--set", override)
    assert result.code == 2
    assert "Traceback" not in result.err
    assert message in result.err, result.err


def test_missing_file(cli, tmp_path):
    result = cli("validate", str(tmp_path / "nope.yaml"))
    assert result.code == 2
    assert "nope.yaml: file not found" in result.err


def test_broken_plugin_is_a_clear_error(cli, write_spec):
    result = cli("validate", write_spec(GOOD), "--plugin", "no_such_plugin_module")
    assert result.code == 2
    assert "--plugin no_such_plugin_module: cannot import it" in result.err
