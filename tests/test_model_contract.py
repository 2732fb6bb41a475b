"""The model contract: what export and summaries read from any ActorCritic, and the plan it is built from."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces

from sfspec import pipeline
from sfspec.compiler.build import compile_model
from sfspec.compiler.components import Config
from sfspec.compiler.model import ActorCritic, StateSlot
from sfspec.export.policy import DeployPolicy
from sfspec.summary import summary_data

BOX4 = spaces.Box(-5.0, 5.0, (4,), np.float32)
BOX2 = spaces.Box(-1.0, 1.0, (2,), np.float32)


def _compile(model: dict, obs_space=BOX4, action_space=BOX2):
    torch.manual_seed(0)
    return compile_model({"model": model}, obs_space, action_space)


def test_state_slots_name_each_recurrent_tensor_with_its_place_and_stack():
    model = _compile({"core": [{"lstm": {"hidden": 6, "layers": 2}}], "critic": {"core": [{"gru": 3}, {"gru": 5}]}})
    assert model.state_slots(with_value=False) == [StateSlot("h", 0, 2, 6, "actor"), StateSlot("c", 12, 2, 6, "actor")]
    critic = model.state_slots(with_value=True)[2:]
    assert critic == [StateSlot("critic_h_0", 24, 1, 3, "critic"), StateSlot("critic_h_1", 27, 1, 5, "critic")]
    assert sum(s.width for s in model.state_slots(with_value=True)) == model.state_size


def test_policy_step_on_named_states_computes_what_the_flat_forward_computes():
    model = _compile({"core": [{"linear": 8}, {"gru": {"hidden": 5, "layers": 2}}], "critic": {"core": [{"lstm": 3}]}})
    model.eval()
    obs = {"obs": torch.randn(3, 4)}
    flat = torch.randn(3, model.state_size)
    slots = model.state_slots(with_value=True)
    named = [flat[:, s.start : s.start + s.width].reshape(3, s.layers, s.hidden) for s in slots]
    with torch.no_grad():
        normalized = model.preprocessor(obs)
        params, new_states, value = model.policy_step(normalized, named, with_value=True)
        out = model(normalized, flat)
    torch.testing.assert_close(params, out["action_params"])
    torch.testing.assert_close(value, out["values"])
    torch.testing.assert_close(torch.cat([s.reshape(3, -1) for s in new_states], 1), out["new_rnn_states"])


def test_policy_step_without_the_value_runs_no_critic():
    model = _compile({"core": [{"gru": 4}], "critic": {"encoder": [{"linear": 7}], "core": [{"gru": 3}]}})
    called = []
    model.critic_stack.encoder.register_forward_pre_hook(lambda *_: called.append(1))
    states = [torch.zeros(2, 1, 4)]
    _, new_states, value = model.policy_step(model.preprocessor({"obs": torch.randn(2, 4)}), states)
    assert value is None and len(new_states) == 1 and not called


class TwoSlotCustom(ActorCritic):
    """A hand-written actor-critic with its own contract: a GRU state and a step counter, named by it."""

    def __init__(self, obs_space, action_space):
        super().__init__(obs_space, action_space, Config())
        self.cell = torch.nn.GRUCell(4, 6)
        self.action_parameterization = self.get_action_parameterization(6)
        self.critic_linear = torch.nn.Linear(6, 1)
        self.state_size = 7

    def forward(self, normalized_obs_dict, rnn_states, values_only=False):
        h = self.cell(normalized_obs_dict["obs"], rnn_states[:, :6])
        counter = rnn_states[:, 6:] + 1.0
        out = {"values": self.critic_linear(h).squeeze(-1), "new_rnn_states": torch.cat([h, counter], 1)}
        if not values_only:
            out["action_params"] = self.action_parameterization(h)
        return out

    def state_slots(self, with_value):
        return [StateSlot("memory", 0, 1, 6, "model"), StateSlot("steps", 6, 1, 1, "model")]


def test_export_names_and_steps_the_states_a_custom_model_declares():
    torch.manual_seed(0)
    model = TwoSlotCustom(BOX4, BOX2).eval()
    policy = DeployPolicy(model, with_value=True)
    assert policy.input_names == ["obs", "memory_in", "steps_in", "reset"]
    assert policy.output_names == ["action", "memory_out", "steps_out", "value"]
    state = model.initial_state(3)
    memory, steps = torch.zeros(3, 1, 6), torch.zeros(3, 1, 1)
    with torch.no_grad():
        for t in range(4):
            obs = torch.randn(3, 4)
            reset = torch.tensor([0.0, 1.0 if t == 2 else 0.0, 0.0])
            state = state * (1.0 - reset).unsqueeze(-1)
            expected, next_state = model.deterministic_actions({"obs": obs}, state)
            action, memory, steps, value = policy(obs, memory, steps, reset)
            torch.testing.assert_close(action, expected)
            torch.testing.assert_close(value, model.values({"obs": obs}, state))
            torch.testing.assert_close(torch.cat([memory.flatten(1), steps.flatten(1)], 1), next_state)
            state = next_state
    assert steps.flatten().tolist() == [4.0, 2.0, 4.0]  # the reset zeroed row 1's counter at t=2


def test_a_registered_custom_actor_critic_exports_through_the_flat_state_default(write_spec):
    loaded = pipeline.load(
        write_spec("env: {id: Pendulum-v1}\nmodel: {custom: sf_actor_critic, params: {hidden: 8}}\n")
    )
    model = pipeline.compile_spec(loaded).eval()
    assert [(s.name, s.width) for s in model.state_slots(with_value=False)] == [("h", 24)]
    policy = DeployPolicy(model, with_value=True)
    obs, state = torch.randn(2, 3), torch.randn(2, 24)
    with torch.no_grad():
        action, h, value = policy(obs, state.reshape(2, 1, 24), torch.zeros(2))
        expected, next_state = model.deterministic_actions({"obs": obs}, state)
    torch.testing.assert_close(action, expected)
    torch.testing.assert_close(h.reshape(2, 24), next_state)
    torch.testing.assert_close(value, model.values({"obs": obs}, state))


def test_action_mask_comes_from_the_mask_input_as_floats():
    obs_space = spaces.Dict({"state": BOX4, "action_mask": spaces.MultiBinary(6)})
    masked = _compile({"action": {"mask": "action_mask"}}, obs_space, spaces.Discrete(6))
    obs = {"state": torch.zeros(2, 4), "action_mask": torch.tensor([[1, 0, 1, 0, 0, 1]] * 2, dtype=torch.int8)}
    assert masked.action_mask(obs).dtype == torch.float32
    assert masked.action_mask(obs).tolist() == [[1.0, 0.0, 1.0, 0.0, 0.0, 1.0]] * 2
    assert _compile({}, obs_space, spaces.Discrete(6)).action_mask(obs) is None


def test_summary_lists_a_hand_written_model_by_its_children():
    data = summary_data("x", TwoSlotCustom(BOX4, BOX2))
    rows = {r["path"]: r for r in data["layers"]}
    assert list(rows) == ["preprocessor", "cell", "action_parameterization", "critic_linear"]
    assert rows["cell"] == {"path": "cell", "layer": "GRUCell", "output_shape": [], "params": 3 * (4 * 6 + 6 * 6 + 12)}
    assert data["state_size"] == 7


def test_summary_rows_end_with_the_heads_of_each_stack():
    rows = _compile({"encoder": [{"linear": 8}], "critic": {"encoder": [{"linear": 5}]}}).summary_rows()
    assert [(r.path, r.layer, r.out_shape) for r in rows] == [
        ("actor.encoder[0]", "linear", (8,)),
        ("critic.encoder[0]", "linear", (5,)),
        ("actor.action_head", "action_head", (2,)),  # two means (the log-std is a parameter, not an output)
        ("critic.value_head", "linear", (1,)),
    ]


def test_the_plan_lists_each_stack_as_resolved_nodes(write_spec):
    path = write_spec("""
        env: {id: CartPole-v1}
        model:
          encoder: [{mlp: [16]}, scripted_linear: 5, {linear: {features: 3}}]
        """)
    checked = pipeline.check(pipeline.load(path))
    (stack,) = [s for s in checked.plan.stacks if s.name == "actor"]
    mlp, plugin, linear = stack.nodes
    assert (mlp.layer, mlp.args["activation"], mlp.in_shape, mlp.out_shape) == ("mlp", "elu", (4,), (16,))
    assert (plugin.in_shape, plugin.out_shape) == ((16,), None)  # a plugin without a shape rule: known once built
    assert (linear.args, linear.in_shape) == ({"features": 3, "bias": True}, None)
    location = checked.loaded.source_map.locate(linear.path)
    assert (location.line, linear.label) == (3, "actor.encoder[2]")


def test_compile_spec_builds_from_the_checked_plan_without_planning_again(write_spec, monkeypatch):
    loaded = pipeline.load(write_spec("env: {id: CartPole-v1}\nmodel: {encoder: [linear: 8]}\n"))
    checked = pipeline.check(loaded)

    def no_second_plan(*args, **kwargs):
        raise AssertionError("planned again")

    monkeypatch.setattr(pipeline, "plan_model", no_second_plan)
    model = pipeline.compile_spec(loaded, plan=checked.plan)
    assert model.inputs is checked.plan.inputs
    assert pipeline.compile_checked(checked).inputs is checked.plan.inputs
    with pytest.raises(AssertionError, match="planned again"):
        pipeline.compile_spec(loaded)


def test_the_model_defaults_are_the_schemas_and_a_hand_built_model_uses_them():
    from sfspec.compiler.config import (
        BOUNDS_PARAM,
        INIT_PARAMS,
        NORMALIZE_PARAMS,
        PREPROCESS_PARAMS,
        SHARE_WEIGHTS_PARAM,
        STD_PARAMS,
    )
    from sfspec.spec.schema import build_schema

    model = build_schema()["properties"]["model"]["properties"]
    assert model["normalize_obs"]["then"]["properties"] == NORMALIZE_PARAMS
    assert model["action"]["properties"]["std"]["properties"] == STD_PARAMS
    assert model["action"]["properties"]["bounds"] == BOUNDS_PARAM
    assert model["init"]["properties"] == INIT_PARAMS
    assert model["preprocess"]["additionalProperties"]["properties"] == PREPROCESS_PARAMS
    assert model["share_weights"] == SHARE_WEIGHTS_PARAM
    hand_built = TwoSlotCustom(BOX4, BOX2)
    assert hand_built.preprocessor.clip == NORMALIZE_PARAMS["clip"]["default"]
    head = hand_built.action_parameterization
    assert head.bounds == BOUNDS_PARAM["default"]
    assert head.log_std_max == pytest.approx(np.log(STD_PARAMS["max"]["default"]))


@pytest.mark.parametrize(
    "core",
    [
        [{"lstm": {"hidden": 8, "layers": 2}}],
        [{"gru": 6}, {"linear": 5}, "tanh", {"lstm": 4}],  # recurrent layers between feed-forward ones
    ],
)
def test_evaluate_over_segments_computes_what_stepping_one_step_at_a_time_computes(core) -> None:
    """The update runs the core over whole segments between episode starts; the result is the stepped one."""
    torch.manual_seed(0)
    obs_space, act_space = spaces.Box(-1.0, 1.0, (3,), np.float32), spaces.Box(-1.0, 1.0, (2,), np.float32)
    model = compile_model({"model": {"encoder": [{"linear": 8}, "tanh"], "core": core}}, obs_space, act_space)
    steps, batch = 12, 3
    obs = {"obs": torch.randn(steps, batch, 3)}
    starts = torch.zeros(steps, batch)
    starts[0, :] = 1.0
    starts[4, 1] = starts[7, 0] = starts[7, 2] = starts[11, 1] = 1.0  # staggered episode starts
    state = torch.randn(batch, model.state_size)
    actions = torch.randn(steps, batch, 2)
    log_probs, _, values = model.evaluate(obs, state, starts, actions)
    stepped_lp, stepped_v, h = [], [], state
    for t in range(steps):  # the reference: act-style single steps, state zeroed where a row starts
        h = h * (1.0 - starts[t]).unsqueeze(-1)
        out = model(model.preprocessor({"obs": obs["obs"][t]}), h)
        stepped_lp.append(model.action_head.distribution(out["action_params"]).log_prob(actions[t]))
        stepped_v.append(out["values"])
        h = out["new_rnn_states"]
    torch.testing.assert_close(log_probs, torch.stack(stepped_lp), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(values, torch.stack(stepped_v), rtol=1e-5, atol=1e-5)
