"""The compiler through its public API: spec + spaces -> actor-critic with the shared model interface."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from sfspec import pipeline
from sfspec.compiler.build import CompiledActorCritic
from sfspec.compiler.model import ActorCritic


def compile_text(write_spec, text: str) -> ActorCritic:
    return pipeline.compile_spec(pipeline.load(write_spec(text)))


def batch_obs(env_id: str, n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """n raw observations from the env's space, as the model's flat input dict."""
    from sfspec.compiler.spaces import flatten_space

    space = gym.make(env_id).observation_space
    space.seed(seed)
    samples = [space.sample() for _ in range(n)]
    leaves = flatten_space(space)

    def pick(sample, key):
        if key == "obs":
            return sample
        for part in key.split("."):
            sample = sample[int(part)] if isinstance(sample, tuple) else sample[part]
        return sample

    return {k: torch.as_tensor(np.stack([np.asarray(pick(s, k)) for s in samples])) for k in leaves}


def check_interface(model: ActorCritic, obs: dict[str, torch.Tensor], action_space: gym.Space) -> None:
    """act / evaluate / deterministic / values agree in shapes and the env accepts the actions."""
    n = next(iter(obs.values())).shape[0]
    state = model.initial_state(n)
    out = model.act(obs, state)
    assert out.actions.shape == (n, model.layout.size)
    assert out.log_probs.shape == (n,) and torch.isfinite(out.log_probs).all()
    assert out.values.shape == (n,)
    assert out.state.shape == (n, model.state_size)
    seq = {k: v.unsqueeze(0).expand(2, *v.shape) for k, v in obs.items()}
    starts = torch.tensor([[1.0] * n, [0.0] * n])
    logp, entropy, values = model.evaluate(seq, state, starts, out.actions.unsqueeze(0).expand(2, -1, -1))
    assert logp.shape == entropy.shape == values.shape == (2, n)
    torch.testing.assert_close(logp[0], out.log_probs, rtol=1e-5, atol=1e-5)  # same state: same log-prob
    env_actions, _ = model.deterministic_actions(obs, state)
    assert env_actions.shape == (n, model.layout.size)
    assert model.values(obs, state).shape == (n,)
    from gymnasium.vector.utils import batch_space, iterate

    from sfspec.compiler.spaces import env_actions

    batched = env_actions(model.to_env(out.actions).detach().numpy(), model.layout)
    for row in iterate(batch_space(action_space, n), batched):
        assert action_space.contains(row), row


@pytest.mark.parametrize(
    "env_id",
    [
        "CartPole-v1",
        "Pendulum-v1",
        "SpaceTest/Dict-v0",
        "SpaceTest/Image-v0",
        "SpaceTest/Mixed-v0",
        "SpaceTest/Masked-v0",
        "SpaceTest/MultiDiscrete-v0",
        "SpaceTest/MultiBinary-v0",
        "SpaceTest/DictAction-v0",
        "SpaceTest/Nested-v0",
    ],
)
def test_every_space_compiles_and_acts(write_spec, env_id):
    encoder = "[flatten, {linear: 32}, elu]" if "Image" in env_id else "[{linear: 32}, elu]"
    mask = "  action: {mask: action_mask}\n" if "Masked" in env_id else ""
    model = compile_text(write_spec, f"env: {{id: {env_id}}}\nmodel:\n  encoder: {encoder}\n{mask}")
    env = gym.make(env_id)
    check_interface(model, batch_obs(env_id, 6), env.action_space)


def test_observation_preprocessing(write_spec):
    model = compile_text(write_spec, "env: {id: SpaceTest/Mixed-v0}\nmodel: {encoder: []}\n")
    # Tuple -> keys 0, 1, 2: Discrete(4, start=1) one-hot, MultiDiscrete one-hots, MultiBinary floats
    assert {k: v.shape for k, v in model.inputs.items()} == {"0": (4,), "1": (5,), "2": (5,)}
    x = model.preprocessor(
        {
            "0": torch.tensor([1, 4]),
            "1": torch.tensor([[2, 0], [0, 1]]),
            "2": torch.tensor([[1, 0, 0, 0, 1]] * 2, dtype=torch.int8),
        }
    )
    assert x["0"].tolist() == [[1, 0, 0, 0], [0, 0, 0, 1]]
    assert x["1"].tolist() == [[0, 0, 1, 1, 0], [1, 0, 0, 0, 1]]
    image = compile_text(write_spec, "env: {id: SpaceTest/Dict-v0}\nmodel: {encoder: []}\n")
    assert image.inputs["camera"].shape == (3, 48, 48)  # channels-last detected and moved first
    raw = torch.full((1, 48, 48, 3), 255, dtype=torch.uint8)
    assert image.preprocessor({"camera": raw})["camera"].shape == (1, 3, 48, 48)
    assert image.preprocessor({"camera": raw})["camera"].max().item() == pytest.approx(1.0)  # uint8 scaled


def test_discrete_observation_as_index_with_embedding(write_spec):
    model = compile_text(
        write_spec,
        """
        env: {id: SpaceTest/Nested-v0}
        model:
          preprocess: {robot.cell: {discrete: index}}
          encoder:
            inputs:
              robot.cell: [{embedding: {num: 7, dim: 3}}, flatten]
        """,
    )
    assert model.inputs["robot.cell"].shape == (1,)
    check_interface(model, batch_obs("SpaceTest/Nested-v0", 4), gym.make("SpaceTest/Nested-v0").action_space)


def test_asymmetric_critic_sees_privileged_state(write_spec):
    model = compile_text(
        write_spec,
        """
        env: {id: SpaceTest/Dict-v0}
        model:
          encoder:
            inputs:
              camera: [{conv2d: {channels: 4, kernel: 8, stride: 4}}, relu, flatten]
            layers: [{linear: 32}, elu]
          actor: {observe: [camera, proprio]}
          critic: {observe: [camera, proprio, privileged]}
        """,
    )
    assert isinstance(model, CompiledActorCritic)
    assert model.actor_stack.encoder.keys == ["camera", "proprio"]
    assert model.critic_stack.encoder.keys == ["camera", "proprio", "privileged"]
    obs = batch_obs("SpaceTest/Dict-v0", 3)
    state = model.initial_state(3)
    changed = dict(obs, privileged=obs["privileged"] + 10.0)
    assert torch.equal(
        model.act(obs, state, deterministic=True).actions, model.act(changed, state, deterministic=True).actions
    )  # the actor cannot see it
    assert not torch.allclose(model.values(obs, state), model.values(changed, state))  # the critic does


def test_shared_weights_build_one_stack(write_spec):
    shared = compile_text(write_spec, "env: {id: CartPole-v1}\nmodel: {encoder: [linear: 16], share_weights: true}\n")
    separate = compile_text(write_spec, "env: {id: CartPole-v1}\nmodel: {encoder: [linear: 16]}\n")
    assert shared.critic_stack is None and separate.critic_stack is not None
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(separate) - count(shared) == 4 * 16 + 16


def test_critic_with_its_own_layers(write_spec):
    model = compile_text(
        write_spec,
        """
        env: {id: CartPole-v1}
        model:
          encoder: [linear: 16]
          critic: {encoder: [linear: 64, relu, linear: 8]}
        """,
    )
    assert model.actor_stack.out_size() == 16 and model.critic_stack.out_size() == 8


def test_recurrent_core_step_and_sequence_agree(write_spec):
    model = compile_text(
        write_spec,
        """
        env: {id: CartPole-v1}
        model:
          encoder: [linear: 16, tanh]
          core: [gru: {hidden: 8, layers: 2}, linear: 8, lstm: 6]
        """,
    )
    # actor and critic each: GRU 2x8 + LSTM h and c 6 each
    assert model.state_size == 2 * (2 * 8 + 2 * 6)
    torch.manual_seed(0)
    steps, n = 5, 3
    obs = {"obs": torch.randn(steps, n, 4)}
    starts = torch.zeros(steps, n)
    starts[0] = 1.0
    starts[3, 1] = 1.0  # env 1 starts a new episode at t=3
    actions = torch.randint(0, 2, (steps, n, 1)).float()
    state0 = torch.randn(n, model.state_size)
    logp_seq, _, values_seq = model.evaluate(obs, state0, starts, actions)
    state = state0
    for t in range(steps):
        state = state * (1 - starts[t]).unsqueeze(-1)
        out = model.act({"obs": obs["obs"][t]}, state)
        logp = model.action_head.distribution(model({"obs": obs["obs"][t]}, state)["action_params"]).log_prob(
            actions[t]
        )
        torch.testing.assert_close(logp, logp_seq[t])
        torch.testing.assert_close(out.values, values_seq[t])
        state = out.state
    # the reset really cuts memory: env 1 at t=3 matches a fresh start from zero state
    fresh = model.act({"obs": obs["obs"][3, 1:2]}, model.initial_state(1))
    torch.testing.assert_close(fresh.values, values_seq[3, 1:2])


def test_orthogonal_init_reaches_every_weight(write_spec):
    model = compile_text(
        write_spec,
        """
        env: {id: CartPole-v1}
        model:
          encoder:
            - linear: 32
            - residual: [{repeat: {times: 2, layers: [linear: 32, tanh]}}]
            - scripted_linear: 32
          core: [gru: 32]
          init: {weights: orthogonal, gain: 2.0, policy_gain: 0.01, value_gain: 0.5}
        """,
    )
    seen = 0
    for name, param in model.named_parameters():
        if param.dim() < 2:
            if name.endswith("bias") or ".bias_" in name:
                assert torch.count_nonzero(param) == 0, name
            continue
        w = param.detach().reshape(param.shape[0], -1)
        gain = 0.01 if name.startswith("action_parameterization") else 0.5 if name.startswith("critic_linear") else 2.0
        small = min(w.shape)
        gram = w @ w.T if w.shape[0] == small else w.T @ w
        torch.testing.assert_close(gram, gain**2 * torch.eye(small), atol=1e-4, rtol=1e-4, msg=name)
        seen += 1
    # per stack: linear, 2 repeated linears, scripted linear, GRU ih + hh; plus both heads
    assert seen == 2 * 6 + 2


@pytest.mark.parametrize("scheme", ["xavier_uniform", "kaiming_normal"])
def test_other_init_schemes(write_spec, scheme):
    model = compile_text(
        write_spec, f"env: {{id: CartPole-v1}}\nmodel: {{encoder: [linear: 256], init: {{weights: {scheme}}}}}\n"
    )
    w = model.actor_stack.encoder.trunk[0].weight
    assert 0.05 < w.std().item() < 1.5


def test_observation_normaliser_lives_in_the_model(write_spec, tmp_path):
    model = compile_text(
        write_spec, "env: {id: Pendulum-v1}\nmodel: {normalize_obs: {clip: 3.0}, encoder: [linear: 8]}\n"
    )
    data = torch.randn(1000, 3) * 4.0 + 7.0
    model.preprocessor.update({"obs": data})
    out = model.preprocessor({"obs": data})["obs"]
    assert abs(out.mean().item()) < 0.05 and abs(out.std().item() - 1.0) < 0.05
    assert model.preprocessor({"obs": torch.full((1, 3), 1e6)})["obs"].max().item() == 3.0  # clipped
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    again = compile_text(
        write_spec, "env: {id: Pendulum-v1}\nmodel: {normalize_obs: {clip: 3.0}, encoder: [linear: 8]}\n"
    )
    again.load_state_dict(torch.load(path, weights_only=True))
    torch.testing.assert_close(again.preprocessor({"obs": data})["obs"], out)


def test_action_mask_is_respected(write_spec):
    model = compile_text(write_spec, "env: {id: SpaceTest/Masked-v0}\nmodel: {action: {mask: action_mask}}\n")
    obs = {"state": torch.randn(200, 4), "action_mask": torch.zeros(200, 6, dtype=torch.int8)}
    obs["action_mask"][:, 2] = 1
    obs["action_mask"][:100, 5] = 1
    actions = model.act(obs, model.initial_state(200)).actions.squeeze(1)
    assert set(actions[:100].tolist()) <= {2.0, 5.0} and set(actions[100:].tolist()) == {2.0}


@pytest.mark.parametrize(
    ("bounds", "check"),
    [
        ("clip", lambda a: a.abs().max().item() <= 2.0),
        ("tanh", lambda a: a.abs().max().item() <= 2.0),
    ],
)
def test_box_actions_meet_the_bounds(write_spec, bounds, check):
    model = compile_text(
        write_spec, f"env: {{id: Pendulum-v1}}\nmodel: {{action: {{std: {{init: 5.0}}, bounds: {bounds}}}}}\n"
    )
    out = model.act({"obs": torch.randn(500, 3)}, model.initial_state(500))
    env_actions = model.to_env(out.actions)
    assert check(env_actions)
    assert (out.actions.abs() > 2.0).any()  # the raw samples do leave the bounds


def test_tanh_log_prob_is_the_squashed_density(write_spec):
    model = compile_text(write_spec, "env: {id: Pendulum-v1}\nmodel: {action: {bounds: tanh, std: {init: 0.7}}}\n")
    obs = {"obs": torch.zeros(1, 3)}
    params = model(model.preprocessor(obs), model.initial_state(1))["action_params"]
    dist = model.action_head.distribution(params)
    # integrate the density of the env action a = 2 tanh(u) over (-2, 2): it must be 1
    u = torch.linspace(-8, 8, 20001).unsqueeze(1)
    a = 2 * torch.tanh(u).squeeze(1)
    density = torch.exp(model.action_head.distribution(params.expand(len(u), -1)).log_prob(u))
    assert torch.trapezoid(density, a).item() == pytest.approx(1.0, abs=1e-3)
    assert dist.entropy().shape == (1,)


def test_state_dependent_std(write_spec):
    model = compile_text(
        write_spec, "env: {id: Pendulum-v1}\nmodel: {action: {std: {mode: state_dependent, init: 0.3}}}\n"
    )
    assert model.action_head.log_std is None
    assert model.action_head.linear.out_features == 2


def test_same_seed_same_model(write_spec):
    path = write_spec("env: {id: CartPole-v1}\nmodel: {encoder: [linear: 8]}\n")
    torch.manual_seed(3)
    a = pipeline.compile_spec(pipeline.load(path))
    torch.manual_seed(3)
    b = pipeline.compile_spec(pipeline.load(path))
    for (n1, p1), (_, p2) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p1, p2), n1


def test_compile_model_works_from_spaces_alone():
    """The compiler's API needs no env and no prior import of the spec modules."""
    import subprocess
    import sys

    code = (
        "from gymnasium import spaces; from sfspec.compiler.build import compile_model; "
        "m = compile_model({'env': {'id': 'x'}, 'model': {'encoder': [{'linear': 4}, 'tanh']}}, "
        "spaces.Box(-1, 1, (3,)), spaces.Discrete(2)); print(m.actor_stack.out_size())"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "4"
