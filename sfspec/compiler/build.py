"""Build the actor-critic ``nn.Module`` from a checked plan, and initialise its weights.

Building maps the plan's nodes to modules; shapes the plan could not know (after a custom
component or a plugin layer without a shape rule) are carried on from the built modules.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from gymnasium import spaces
from torch import nn

from sfspec.compiler.components import Config, Decoder, Encoder, ModelCore, ModelParams
from sfspec.compiler.config import InitConfig
from sfspec.compiler.model import ActorCritic, ModuleRow
from sfspec.compiler.network import CompiledActorCritic, SpecCore, SpecDecoder, SpecEncoder, Stack
from sfspec.compiler.plan import (
    LayerNode,
    ModelPlan,
    StackPlan,
    concat_shape,
    encoder_input_shape,
    need_vector,
    plan_model,
)
from sfspec.compiler.registry import ACTOR_CRITICS, COMPONENT_REGISTRIES
from sfspec.compiler.shapes import ShapeError, build_parsed
from sfspec.errors import SpecError, SpecIssue
from sfspec.sourcemap import SourceMap

__all__ = [
    "CompiledActorCritic",
    "ModelFactory",
    "SpecCore",
    "build_from_plan",
    "build_model",
    "build_stack",
    "compile_model",
    "initialize_weights",
]


def _sequential(modules: list[nn.Module]) -> nn.Module:
    return nn.Sequential(*modules) if modules else nn.Identity()


def _build_nodes(nodes: list[LayerNode], shape: tuple, rows: list[ModuleRow]) -> tuple[list[nn.Module], tuple]:
    """Build a run of layer nodes from ``shape``; returns the modules and the output shape."""
    modules = []
    for node in nodes:
        module, shape = build_parsed(node.layer, dict(node.args), shape, node.path, node.part)
        rows.append(ModuleRow(node.label, node.layer, shape, module))
        modules.append(module)
    return modules, shape


def _build_component(node: LayerNode, given: Any, stack: StackPlan, rows: list[ModuleRow]) -> tuple[nn.Module, tuple]:
    """Instantiate a registered Encoder/ModelCore/Decoder with Sample Factory's arguments."""
    cls = COMPONENT_REGISTRIES[node.part].get(node.custom)
    params = Config(node.args)
    try:
        if node.part == "encoder":
            obs_space = spaces.Dict(
                {k: spaces.Box(-math.inf, math.inf, given[k].shape, "float32") for k in stack.observe}
            )
            module = cls(params, obs_space)
        else:
            module = cls(params, given[0])
        out_size = int(module.get_out_size())
    except ShapeError:
        raise
    except Exception as exc:  # the plugin's own failure, reported at the spec path that named it
        raise ShapeError(node.path, f"custom {node.part} '{node.custom}' failed: {type(exc).__name__}: {exc}") from exc
    rows.append(ModuleRow(node.label, node.layer, (out_size,), module))
    return module, (out_size,)


def _build_encoder(stack: StackPlan, inputs: dict, rows: list[ModuleRow]) -> tuple[nn.Module, tuple]:
    if stack.encoder_kind == "custom":
        return _build_component(stack.part_nodes("encoder")[0], inputs, stack, rows)
    branches, outs = {}, []
    for key in stack.observe:
        if key in stack.branch_keys:
            modules, out = _build_nodes(stack.part_nodes("encoder", key), inputs[key].shape, rows)
            branches[key] = _sequential(modules)
            outs.append(out)
        else:
            outs.append(inputs[key].shape)
    single = stack.encoder_kind == "list" and len(stack.observe) == 1
    shape = encoder_input_shape(stack.observe, inputs) if stack.encoder_kind == "list" else concat_shape(outs)
    trunk, shape = _build_nodes(stack.part_nodes("encoder"), shape, rows)
    need_vector(shape, stack.paths["encoder"], "encoder")
    return SpecEncoder(stack.observe, branches, _sequential(trunk), shape[0], single), shape


def build_stack(stack: StackPlan, inputs: dict) -> tuple[Stack, list[ModuleRow]]:
    """Build one planned stack's modules (raises ShapeError for what only building can find)."""
    rows: list[ModuleRow] = []
    encoder, shape = _build_encoder(stack, inputs, rows)
    nodes = stack.part_nodes("core")
    if nodes and nodes[0].custom:
        core, shape = _build_component(nodes[0], shape, stack, rows)
        if not isinstance(core, ModelCore):  # a plain module registered as a core: a layer without state
            core = SpecCore([(core, "ff")], shape[0])
    else:
        modules, shape = _build_nodes(nodes, shape, rows)
        core = SpecCore([(m, n.layer if n.recurrent else "ff") for m, n in zip(modules, nodes)], shape[0])
    need_vector(shape, stack.paths["core"], "core")
    nodes = stack.part_nodes("decoder")
    if nodes and nodes[0].custom:
        decoder, shape = _build_component(nodes[0], shape, stack, rows)
    else:
        modules, shape = _build_nodes(nodes, shape, rows)
        decoder = SpecDecoder(_sequential(modules), shape[0])
    need_vector(shape, stack.paths["decoder"], "decoder")
    return Stack(encoder, core, decoder), rows


class ModelFactory:
    """Handed to custom ActorCritic classes (Sample Factory's ``model_factory``)."""

    def make_encoder(self, name: str, cfg: Config, obs_space: Any) -> Encoder:
        """A registered encoder by name."""
        return COMPONENT_REGISTRIES["encoder"].get(name)(cfg, obs_space)

    def make_core(self, name: str, cfg: Config, input_size: int) -> ModelCore:
        """A registered core by name."""
        return COMPONENT_REGISTRIES["core"].get(name)(cfg, input_size)

    def make_decoder(self, name: str, cfg: Config, input_size: int) -> Decoder:
        """A registered decoder by name."""
        return COMPONENT_REGISTRIES["decoder"].get(name)(cfg, input_size)


def build_model(plan: ModelPlan) -> ActorCritic:
    """Build and initialise the model a plan describes (raises ShapeError for what only building finds)."""
    if plan.custom_model is not None:
        cls = ACTOR_CRITICS.get(plan.custom_model)
        try:
            model = cls(
                ModelFactory(), plan.obs_space, plan.action_space, ModelParams(plan.model.get("params", {}), plan)
            )
        except Exception as exc:
            message = f"custom model '{plan.custom_model}' failed: {type(exc).__name__}: {exc}"
            raise ShapeError(("model", "custom"), message) from exc
    else:
        built = [build_stack(s, plan.inputs) for s in plan.stacks]
        model = CompiledActorCritic(plan, [b[0] for b in built], [row for b in built for row in b[1]])
    initialize_weights(model, plan.config.init)
    return model


def build_from_plan(plan: ModelPlan, smap: SourceMap | None = None) -> ActorCritic:
    """Like ``build_model``, with what only building can find raised as a SpecError at its spec position."""
    try:
        return build_model(plan)
    except ShapeError as exc:
        where = (smap or SourceMap()).locate(exc.path)
        raise SpecError(SpecIssue(where, exc.path, exc.message)) from None


def initialize_weights(model: nn.Module, init: InitConfig) -> None:
    """Initialise every weight matrix and bias by parameter name, so nothing is skipped.

    Walking parameters (not module types) reaches layers inside composites, recurrent layers,
    plugin layers and scripted modules alike. Heads get their own gains.
    """
    if init.weights == "default":
        return
    with torch.no_grad():
        for name, param in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if name.startswith("action_parameterization."):
                g = init.policy_gain
            elif name.startswith("critic_linear."):
                g = init.value_gain
            else:
                g = init.gain
            if param.dim() >= 2:
                _init_matrix(param, init.weights, g)
            elif leaf.startswith("bias") or leaf.endswith("bias"):
                param.zero_()


def _init_matrix(weight: torch.Tensor, scheme: str, gain: float) -> None:
    if scheme == "orthogonal":
        nn.init.orthogonal_(weight, gain)
    elif scheme == "xavier_uniform":
        nn.init.xavier_uniform_(weight, gain)
    elif scheme == "xavier_normal":
        nn.init.xavier_normal_(weight, gain)
    elif scheme == "kaiming_uniform":
        nn.init.kaiming_uniform_(weight, nonlinearity="linear").mul_(gain)
    elif scheme == "kaiming_normal":
        nn.init.kaiming_normal_(weight, nonlinearity="linear").mul_(gain)
    else:
        raise ValueError(f"unknown init scheme '{scheme}'")


def compile_model(
    spec: dict, obs_space: Any, action_space: Any, smap: SourceMap | None = None, env_name: str = "the env"
) -> ActorCritic:
    """Spec (validated) + spaces -> initialised actor-critic; spec problems raise SpecError."""
    smap = smap or SourceMap()
    return build_from_plan(plan_model(spec, obs_space, action_space, smap, env_name), smap)

