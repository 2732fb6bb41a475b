"""What a new user meets first: the README's Python API runs as written, and wrong inputs say what is wrong."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import ROOT

from sfspec import pipeline


def readme_python_api_snippet() -> str:
    """The first ```python block under the README's "## Python API" heading."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "no python block under ## Python API"
    return match.group(1)


def test_readme_python_api_snippet_runs_as_written(monkeypatch):
    monkeypatch.chdir(ROOT)  # as a reader runs it: from the repository root
    namespace: dict = {"__name__": "readme"}
    exec(compile(readme_python_api_snippet(), "README.md (Python API)", "exec"), namespace)
    model = namespace["model"]
    assert namespace["logp"].shape == namespace["entropy"].shape == namespace["values"].shape == (4, 16)
    assert namespace["actions"].shape == (16, model.layout.size)
    assert namespace["state"].shape == (16, model.state_size)
    assert torch.isfinite(namespace["logp"]).all()


@pytest.fixture(scope="module")
def robot():
    """The README's model (specs/robot.yaml) and a batch of 16 observations shaped as its env gives them."""
    model = pipeline.compile_spec(pipeline.load(str(ROOT / "specs" / "robot.yaml")))
    obs = {key: torch.zeros(16, *info.raw_shape) for key, info in model.inputs.items()}
    return model, obs


ENTRY_POINTS = ["act", "deterministic_actions", "values"]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_missing_observation_key_is_named_with_the_keys_the_model_takes(robot, entry):
    model, obs = robot
    without_privileged = {k: v for k, v in obs.items() if k != "privileged"}
    with pytest.raises(ValueError) as caught:
        getattr(model, entry)(without_privileged, model.initial_state(16))
    assert str(caught.value) == "observation 'privileged' is missing; the model takes: privileged, proprio, target_seen"


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_wrongly_shaped_observation_names_the_input_and_both_shapes(robot, entry):
    model, obs = robot
    wide = {**obs, "proprio": torch.zeros(16, 7)}
    with pytest.raises(ValueError, match=re.escape("observation 'proprio': expected shape (B, 6), got (16, 7)")):
        getattr(model, entry)(wide, model.initial_state(16))


def test_an_observation_batch_that_disagrees_with_the_state_says_which_batch(robot):
    model, obs = robot
    short = {**obs, "target_seen": torch.zeros(8, 2)}
    with pytest.raises(ValueError) as caught:
        model.act(short, model.initial_state(16))
    assert str(caught.value) == (
        "observation 'target_seen': expected shape (B, 2) with B = 16 as in the state, got (8, 2)"
    )


def test_a_state_of_the_wrong_width_points_at_initial_state(robot):
    model, obs = robot
    with pytest.raises(ValueError, match=re.escape("state: expected shape (B, 256), as model.initial_state(B)")):
        model.act(obs, torch.zeros(16, 64))


def test_observations_not_in_a_dict_are_refused_with_the_input_names(robot):
    model, obs = robot
    names = "(privileged, proprio, target_seen)"
    with pytest.raises(ValueError, match=re.escape(f"must be a dict of tensors keyed by input name {names}")):
        model.values(obs["proprio"], model.initial_state(16))
    with pytest.raises(ValueError, match=re.escape("observation 'proprio': expected a torch.Tensor, got ndarray")):
        model.values({**obs, "proprio": obs["proprio"].numpy()}, model.initial_state(16))


def test_evaluate_names_the_sequence_input_that_is_wrong(robot):
    model, obs = robot
    seq = {k: v.expand(3, *v.shape) for k, v in obs.items()}  # (T=3, B=16, ...)
    state, starts, actions = model.initial_state(16), torch.zeros(3, 16), torch.zeros(3, 16, 2)
    logp, _, _ = model.evaluate(seq, state, starts, actions)
    assert logp.shape == (3, 16)
    with pytest.raises(ValueError, match=re.escape("starts: expected shape (T, B)")):
        model.evaluate(seq, state, torch.zeros(16), actions)
    with pytest.raises(ValueError, match=re.escape("observation 'proprio': expected shape (T, B, 6), got (16, 6)")):
        model.evaluate({**seq, "proprio": obs["proprio"]}, state, starts, actions)
    with pytest.raises(ValueError, match=re.escape("actions: expected shape (T, B, 2) with T = 3, B = 16")):
        model.evaluate(seq, state, starts, torch.zeros(3, 16, 3))
    with pytest.raises(ValueError, match=re.escape("state: expected shape (B, 256) with B = 16 as in starts")):
        model.evaluate(seq, model.initial_state(4), starts, actions)


def test_to_env_refuses_actions_of_the_wrong_width(robot):
    model, _ = robot
    with pytest.raises(ValueError, match=re.escape("actions: expected shape (B, 2)")):
        model.to_env(torch.zeros(16, 3))
