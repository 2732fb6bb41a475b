"""The training speed paths compute what the plain paths compute.

A separate actor and critic of the same plain MLP shape run as one batched matmul per layer
(``CompiledActorCritic.batched_pairs``), and ``tanh`` trains with a faster CPU kernel
(``layers.fast_tanh_class``). Both must give the outputs and gradients of the plain modules, and
leave evaluation, export and torch.compile on torch's own tanh.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import write_yaml
from gymnasium import spaces

from sfspec.compiler.build import compile_model
from sfspec.compiler.layers import activation

PENDULUM_OBS = spaces.Box(-8.0, 8.0, (3,))
TORQUE = spaces.Box(-2.0, 2.0, (1,))
MLP = [{"mlp": {"sizes": [16, 16], "activation": "tanh"}}]


def build(model: dict, obs_space=PENDULUM_OBS, action_space=TORQUE):
    """A model from a ``model:`` section, seeded."""
    torch.manual_seed(0)
    return compile_model({"env": {"id": "x"}, "model": model}, obs_space, action_space)


def stack_by_stack(model):
    """A copy of ``model`` that runs its actor and critic stack by stack."""
    plain = copy.deepcopy(model)
    plain.batched_pairs = None
    return plain


def evaluate_with_grads(model, obs, actions):
    """log-probs, entropies, values and the gradient of a loss mixing them, per parameter name."""
    model.zero_grad(set_to_none=True)
    steps, batch = actions.shape[:2]
    log_probs, entropy, values = model.evaluate(obs, torch.zeros(batch, 0), torch.zeros(steps, batch), actions)
    (log_probs.mean() + entropy.mean() + (values**2).mean()).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return (log_probs.detach(), entropy.detach(), values.detach()), grads


def test_a_separate_actor_and_critic_of_one_shape_run_batched_with_the_same_outputs_and_gradients():
    model = build({"encoder": MLP})
    assert model.batched_pairs is not None
    plain = stack_by_stack(model)
    torch.manual_seed(1)
    obs = {"obs": torch.randn(1, 64, 3)}
    actions = torch.randn(1, 64, 1)
    (outs, grads), (plain_outs, plain_grads) = (evaluate_with_grads(m, obs, actions) for m in (model, plain))
    for got, want in zip(outs, plain_outs):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert grads.keys() == plain_grads.keys() and len(grads) == len(list(model.parameters()))
    for name in grads:
        torch.testing.assert_close(grads[name], plain_grads[name], rtol=1e-4, atol=1e-5, msg=name)


def test_batched_acting_samples_the_same_actions_and_values_for_the_same_seed():
    model = build({"encoder": MLP})
    plain = stack_by_stack(model)
    obs = {"obs": torch.randn(32, 3)}
    results = []
    for m in (model, plain):
        torch.manual_seed(5)
        results.append(m.act(obs, torch.zeros(32, 0)))
    for field in ("actions", "log_probs", "values"):
        torch.testing.assert_close(getattr(results[0], field), getattr(results[1], field), rtol=1e-5, atol=1e-5)


def test_heads_of_different_widths_are_batched_below_them_and_agree():
    model = build({"encoder": MLP}, action_space=spaces.Discrete(3))  # 3 logits against 1 value
    assert model.batched_pairs is not None
    obs = {"obs": torch.randn(1, 20, 3)}
    actions = torch.randint(0, 3, (1, 20, 1)).float()
    plain = stack_by_stack(model)
    (outs, grads), (plain_outs, plain_grads) = (evaluate_with_grads(m, obs, actions) for m in (model, plain))
    for got, want in zip(outs, plain_outs):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for name in grads:
        torch.testing.assert_close(grads[name], plain_grads[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize(
    "model",
    [
        {"encoder": MLP, "share_weights": True},
        {"encoder": MLP, "critic": {"encoder": [{"mlp": {"sizes": [32, 16], "activation": "tanh"}}]}},
        {"encoder": MLP, "critic": {"encoder": [{"mlp": {"sizes": [16, 16], "activation": "relu"}}]}},
        {"encoder": [{"mlp": {"sizes": [16], "activation": "tanh", "norm": "layer_norm"}}]},
        {"encoder": MLP, "core": [{"gru": 8}]},
    ],
    ids=["shared weights", "other sizes", "other activation", "layer norm", "recurrent core"],
)
def test_stacks_that_cannot_be_batched_run_stack_by_stack(model):
    built = build(model)
    assert built.batched_pairs is None
    obs = {"obs": torch.randn(4, 3)}
    assert built.act(obs, built.initial_state(4)).actions.shape == (4, 1)


def test_fast_tanh_is_tanh_within_float_rounding_with_tanh_s_gradient():
    layer = activation("tanh")
    assert isinstance(layer, torch.nn.Tanh)
    x = torch.linspace(-12.0, 12.0, 4001, requires_grad=True)
    y = layer(x)
    assert type(y.grad_fn).__name__ != "TanhBackward0"  # the sigmoid form ran, not torch.tanh
    torch.testing.assert_close(y, torch.tanh(x), rtol=0, atol=3e-7)
    (grad,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(grad, 1 - y.detach() ** 2, rtol=0, atol=1e-7)


def test_fast_tanh_leaves_evaluation_and_traced_graphs_on_torch_tanh():
    layer = activation("tanh")
    x = torch.randn(100)
    assert torch.equal(layer.eval()(x), torch.tanh(x))  # eval mode: exact, as export and parity see it
    layer.train()
    traced = torch.jit.trace(layer, x)
    assert "aten::tanh" in str(traced.graph) and "sigmoid" not in str(traced.graph)


def test_training_with_the_speed_paths_repeats_exactly_for_a_seed(cli, tmp_path):
    spec = {
        "env": {"id": "sfspec/Pendulum-v1", "num_envs": 8},
        "model": {"encoder": MLP},
        "train": {"steps": 256, "rollout": 16, "epochs": 2, "minibatches": 2, "log_interval": 1, "seed": 3},
    }
    path = write_yaml(tmp_path, spec)
    rows = []
    for run in ("a", "b"):
        assert cli("train", path, "--run-dir", str(tmp_path / run), "-q").code == 0
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        rows.append([{k: v for k, v in json.loads(x).items() if k not in ("time", "sps")} for x in lines])
    assert rows[0] == rows[1] and len(rows[0]) == 2
