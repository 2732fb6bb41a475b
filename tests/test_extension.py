"""The Python extension API: custom layers and Sample Factory-shaped components, registered by name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import gymnasium as gym
import pytest
import torch

from sfspec import pipeline
from sfspec.compiler.registry import LAYERS, register_layer


def test_plugin_layer_and_encoder_validate_and_compile_from_yaml(cli, write_spec):
    path = write_spec("""
        env: {id: SpaceTest/Dict-v0}
        model:
          encoder:
            inputs:
              proprio: [{linear: 16}, {scaled_tanh: 2.0}]
            layers: [{linear: 32}]
          critic:
            observe: [proprio, privileged]
            encoder: {custom: sf_encoder, params: {hidden: 24}}
        """)
    assert cli("validate", path).code == 0
    result = cli("summary", path, "--json")
    assert result.code == 0, result.err
    rows = {r["path"]: r for r in json.loads(result.out)["layers"]}
    assert rows["actor.encoder.inputs.proprio[1]"]["layer"] == "scaled_tanh"
    assert rows["critic.encoder"] == {
        "path": "critic.encoder",
        "layer": "custom:sf_encoder",
        "output_shape": [24],
        "params": (12 + 6) * 24 + 24,
    }


def test_plugin_layer_schema_is_part_of_the_spec_schema(cli, write_spec):
    schema = json.loads(cli("schema").out)
    assert schema["$defs"]["layers"]["scaled_tanh"]["then"]["properties"]["scale"]["exclusiveMinimum"] == 0
    bad = write_spec("env: {id: CartPole-v1}\nmodel:\n  encoder: [{scaled_tanh: {scale: -1}}]\n")
    result = cli("validate", bad)
    assert result.code == 2 and ":3:35: model.encoder[0].scaled_tanh.scale: must be > 0, got -1" in result.err


def test_sample_factory_template_components(write_spec):
    """Encoder, core and decoder written to Sample Factory's template, named from YAML."""
    model = pipeline.compile_spec(
        pipeline.load(
            write_spec("""
        env: {id: CartPole-v1}
        model:
          encoder: {custom: sf_encoder, params: {hidden: 32}}
          core: {custom: sf_core, params: {size: 20}}
          decoder: {custom: sf_decoder}
          share_weights: true
        """)
        )
    )
    assert model.state_size == 20
    obs = {"obs": torch.randn(5, 4)}
    out = model.act(obs, model.initial_state(5))
    assert out.state.shape == (5, 20) and out.state.abs().sum() > 0
    seq = {"obs": torch.randn(3, 5, 4)}
    logp, entropy, values = model.evaluate(seq, model.initial_state(5), torch.zeros(3, 5), torch.zeros(3, 5, 1))
    assert logp.shape == entropy.shape == values.shape == (3, 5)


def test_custom_whole_actor_critic(write_spec):
    model = pipeline.compile_spec(
        pipeline.load(
            write_spec("""
        env: {id: Pendulum-v1}
        model:
          custom: sf_actor_critic
          params: {hidden: 40}
          normalize_obs: true
          action: {bounds: tanh}
        """)
        )
    )
    assert type(model).__name__ == "CustomActorCritic"
    assert model.state_size == 24
    assert len(model.preprocessor.normalizers) == 1  # the normaliser comes with the base class
    out = model.act({"obs": torch.randn(4, 3)}, model.initial_state(4))
    assert model.to_env(out.actions).abs().max() <= 2.0
    # init reached the custom model's layers too: the policy head got its small gain
    assert model.action_parameterization.linear.weight.abs().max() < 0.05


def test_register_layer_rejects_bad_definitions():
    with pytest.raises(ValueError, match="primary argument 'size' is not among its params"):
        register_layer("bad_layer", lambda call: None, primary="size")
    with pytest.raises(KeyError, match="already registered"):
        register_layer("linear", lambda call: None)
    with pytest.raises(KeyError, match="did you mean 'linear'"):
        LAYERS.get("lineer")


def test_plugin_from_the_command_line_in_a_fresh_process(tmp_path):
    (tmp_path / "my_plugin.py").write_text(
        textwrap.dedent("""
        import torch
        from sfspec.compiler.registry import register_layer

        @register_layer("double", infer=lambda call: call.in_shape)
        def build_double(call):
            return torch.nn.Identity()
        """)
    )
    spec = tmp_path / "spec.yaml"
    spec.write_text("env: {id: CartPole-v1}\nmodel:\n  encoder: [linear: 8, double]\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    run = lambda *a: subprocess.run([sys.executable, "-m", "sfspec", *a], capture_output=True, text=True, env=env)  # noqa: E731
    without = run("validate", str(spec))
    assert without.returncode == 2 and "unknown layer 'double'" in without.stderr
    with_plugin = run("validate", str(spec), "--plugin", "my_plugin")
    assert with_plugin.returncode == 0, with_plugin.stderr


def test_plugin_from_an_installed_entry_point(tmp_path):
    """An 'sfspec.plugins' entry point is loaded for every command, with no flag."""
    (tmp_path / "ep_plugin.py").write_text(
        textwrap.dedent("""
        import torch
        from sfspec.compiler.registry import register_layer

        def register():
            register_layer("ep_identity", lambda call: torch.nn.Identity(), infer=lambda call: call.in_shape)
        """)
    )
    dist = tmp_path / "ep_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[sfspec.plugins]\nmine = ep_plugin:register\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text("env: {id: CartPole-v1}\nmodel:\n  encoder: [linear: 8, ep_identity]\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-m", "sfspec", "summary", str(spec), "--json"], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    assert any(r["layer"] == "ep_identity" for r in json.loads(result.stdout)["layers"])


def test_env_module_ids_need_the_module_as_a_plugin(tmp_path):
    (tmp_path / "my_envs.py").write_text(
        textwrap.dedent("""
        import gymnasium as gym
        from gymnasium.envs.classic_control import CartPoleEnv

        class MyEnv(CartPoleEnv):
            pass
        """)
    )
    spec = tmp_path / "spec.yaml"
    spec.write_text("env: {id: 'my_envs:MyEnv-v0'}\nmodel: {}\n")
    (tmp_path / "reg.py").write_text("import gymnasium as gym\ngym.register('MyEnv-v0', entry_point='my_envs:MyEnv')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    run = lambda *a: subprocess.run([sys.executable, "-m", "sfspec", *a], capture_output=True, text=True, env=env)  # noqa: E731
    refused = run("validate", str(spec))
    assert refused.returncode == 2 and "--plugin my_envs" in refused.stderr
    (tmp_path / "my_envs.py").write_text(
        (tmp_path / "my_envs.py").read_text() + "\ngym.register('MyEnv-v0', entry_point=MyEnv)\n"
    )
    allowed = run("summary", str(spec), "--plugin", "my_envs")
    assert allowed.returncode == 0, allowed.stderr
    assert "observation: Box(4,)" in allowed.stdout


def test_plugin_layer_without_shape_rule_is_probed(write_spec):
    model = pipeline.compile_spec(
        pipeline.load(write_spec("env: {id: CartPole-v1}\nmodel:\n  encoder: [scripted_linear: 12, tanh, linear: 5]\n"))
    )
    assert model.actor_stack.out_size() == 5
    assert gym.make("CartPole-v1").observation_space.shape == (4,)


def test_commands_skip_the_entry_point_scan_when_no_distribution_declares_a_plugin(tmp_path):
    code = (
        "import sys; from sfspec.cli import main; code = main(['validate', '--no-env', "
        f"{os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'specs', 'cartpole.yaml')!r}]); "
        "assert 'importlib.metadata' not in sys.modules, 'importlib.metadata was imported'; sys.exit(code)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
