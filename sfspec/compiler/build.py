"""Build the actor-critic ``nn.Module`` from a checked plan, and initialise its weights."""

from __future__ import annotations

import math
from typing import Any

import torch
from gymnasium import spaces
from torch import nn

from sfspec.compiler.components import Config, Decoder, Encoder, ModelCore
from sfspec.compiler.model import ActorCritic, ObsDict
from sfspec.compiler.plan import ModelPlan, StackPlan, StackResult, plan_model, walk_stack
from sfspec.compiler.registry import ACTOR_CRITICS, COMPONENT_REGISTRIES
from sfspec.compiler.shapes import ShapeError
from sfspec.errors import SpecError, SpecIssue
from sfspec.spec.loader import SourceMap


class SpecEncoder(Encoder):
    """Encoder from a spec: per-key branches, concatenation, then shared layers."""

    def __init__(
        self, keys: tuple[str, ...], branches: dict[str, nn.Module], trunk: nn.Module, out_size: int, single: bool
    ):
        super().__init__(Config())
        self.keys = list(keys)
        self.branch_keys = [k for k in keys if k in branches]
        self.branches = nn.ModuleList(branches[k] for k in self.branch_keys)
        self.trunk = trunk
        self.out_size = out_size
        self.single = single  # one observed input and a plain layer list: no flattening

    def get_out_size(self) -> int:
        """Width of the feature vector."""
        return self.out_size

    def forward(self, obs: ObsDict) -> torch.Tensor:
        if self.single:
            return self.trunk(obs[self.keys[0]])
        parts = []
        for key in self.keys:
            x = obs[key]
            if key in self.branch_keys:
                x = self.branches[self.branch_keys.index(key)](x)
            parts.append(x.flatten(1))
        return self.trunk(torch.cat(parts, dim=1))


class SpecCore(ModelCore):
    """Core from a spec: feed-forward layers and GRU/LSTM layers, state carried as one flat tensor."""

    def __init__(self, items: list[tuple[nn.Module, Any]], out_size: int):
        super().__init__(Config())
        self.layers = nn.ModuleList(m for m, _ in items)
        self.kinds: list[str] = []
        self.state_slices: list[tuple[int, int, int]] = []  # (start, num_layers, hidden) per layer
        start = 0
        for module, builder in items:
            kind = builder.name if builder is not None and builder.recurrent else "ff"
            self.kinds.append(kind)
            if kind == "ff":
                self.state_slices.append((start, 0, 0))
                continue
            self.state_slices.append((start, module.num_layers, module.hidden_size))
            start += module.num_layers * module.hidden_size * (2 if kind == "lstm" else 1)
        self._state_size = start
        self.out_size = out_size

    def get_out_size(self) -> int:
        """Width of the core's output."""
        return self.out_size

    def state_size(self) -> int:
        """Width of the flat recurrent state."""
        return self._state_size

    def forward(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self._state_size:
            return self.forward_layers(x, [])[0], state
        x, states = self.forward_layers(x, self.unpack_state(state))
        return x, self.pack_state(states)

    def forward_sequence(
        self, x: torch.Tensor, state: torch.Tensor, starts: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Like ``ModelCore.forward_sequence``, unpacking the flat state once rather than every step."""
        if not self._state_size:
            steps, batch = x.shape[:2]
            return self.forward_layers(x.reshape(steps * batch, -1), [])[0].reshape(steps, batch, -1), state
        states, outputs = self.unpack_state(state), []
        for t in range(x.shape[0]):
            keep = (1.0 - starts[t]).reshape(1, -1, 1)
            out, states = self.forward_layers(x[t], [s * keep for s in states])
            outputs.append(out)
        return torch.stack(outputs), self.pack_state(states)

    def forward_layers(self, x: torch.Tensor, states: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One step on per-layer states in torch's (layers, batch, hidden) layout: h, then c for an LSTM."""
        new_states: list[torch.Tensor] = []
        for layer, kind in zip(self.layers, self.kinds):
            if kind == "ff":
                x = layer(x)
                continue
            i = len(new_states)
            if kind == "gru":
                y, h = layer(x.unsqueeze(0), states[i])
                new_states.append(h)
            else:
                y, (h, c) = layer(x.unsqueeze(0), (states[i], states[i + 1]))
                new_states += [h, c]
            x = y.squeeze(0)
        return x, new_states

    def unpack_state(self, state: torch.Tensor) -> list[torch.Tensor]:
        """The flat (B, S) state as ``forward_layers`` takes it."""
        out = []
        for kind, (start, layers, hidden) in zip(self.kinds, self.state_slices):
            starts = {"ff": (), "gru": (start,), "lstm": (start, start + layers * hidden)}[kind]
            out += [_unpack(state, s, layers, hidden) for s in starts]
        return out

    def pack_state(self, states: list[torch.Tensor]) -> torch.Tensor:
        """Per-layer states back to the flat (B, S) state."""
        return torch.cat([_pack(h) for h in states], dim=1)


def _unpack(state: torch.Tensor, start: int, layers: int, hidden: int) -> torch.Tensor:
    """A slice of the flat (B, S) state as torch's (layers, B, hidden)."""
    flat = state[:, start : start + layers * hidden]
    return flat.reshape(state.shape[0], layers, hidden).transpose(0, 1).contiguous()


def _pack(h: torch.Tensor) -> torch.Tensor:
    """torch's (layers, B, hidden) state back to a flat (B, layers * hidden) slice."""
    return h.transpose(0, 1).reshape(h.shape[1], -1)


class SpecDecoder(Decoder):
    """Decoder from a spec: a plain layer list."""

    def __init__(self, layers: nn.Module, out_size: int):
        super().__init__(Config())
        self.layers = layers
        self.out_size = out_size

    def get_out_size(self) -> int:
        """Width of the decoder's output."""
        return self.out_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Stack(nn.Module):
    """encoder -> core -> decoder for the actor, the critic, or both."""

    def __init__(self, encoder: nn.Module, core: nn.Module, decoder: nn.Module):
        super().__init__()
        self.encoder, self.core, self.decoder = encoder, core, decoder
        self.state_size = core.state_size() if hasattr(core, "state_size") else 0

    def out_size(self) -> int:
        """Width of the features handed to the heads."""
        return self.decoder.get_out_size()

    def forward(self, obs: ObsDict, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, new_state = self.core(self.encoder(obs), state)
        return self.decoder(x), new_state

    def forward_sequence(self, obs: ObsDict, state: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        """Features (T*B, F) for flattened (T, B) observations; only the core steps through time."""
        steps, batch = starts.shape
        x = self.encoder(obs)  # encoder and decoder are feed-forward: one batched call each
        y, _ = self.core.forward_sequence(x.reshape(steps, batch, -1), state, starts)
        return self.decoder(y.reshape(steps * batch, -1))


class CompiledActorCritic(ActorCritic):
    """The actor-critic a spec describes: one shared stack or an actor and a critic stack."""

    def __init__(self, plan: ModelPlan, stacks: list[Stack]):
        super().__init__(plan.obs_space, plan.action_space, Config({}, plan=plan))
        self.shared = plan.shared
        self.actor_stack = stacks[0]
        self.critic_stack = None if plan.shared else stacks[1]
        critic = stacks[0] if plan.shared else stacks[1]
        self.action_parameterization = self.get_action_parameterization(self.actor_stack.out_size())
        self.critic_linear = nn.Linear(critic.out_size(), 1)
        self.actor_state_size = self.actor_stack.state_size
        self.state_size = sum(s.state_size for s in stacks)

    def forward(self, normalized_obs: ObsDict, rnn_states: torch.Tensor, values_only: bool = False) -> dict:
        actor_state = rnn_states[:, : self.actor_state_size]
        if self.critic_stack is None:
            x, new_state = self.actor_stack(normalized_obs, actor_state)
            out = {"values": self.critic_linear(x).squeeze(-1), "new_rnn_states": new_state}
            if not values_only:
                out["action_params"] = self.action_parameterization(x)
            return out
        critic_x, critic_state = self.critic_stack(normalized_obs, rnn_states[:, self.actor_state_size :])
        out = {"values": self.critic_linear(critic_x).squeeze(-1)}
        if values_only:
            out["new_rnn_states"] = torch.cat([actor_state, critic_state], dim=1)
            return out
        actor_x, actor_state = self.actor_stack(normalized_obs, actor_state)
        out["action_params"] = self.action_parameterization(actor_x)
        out["new_rnn_states"] = torch.cat([actor_state, critic_state], dim=1)
        return out

    def _sequence_outputs(self, normalized: ObsDict, state: torch.Tensor, starts: torch.Tensor):
        """Recurrent models: run encoders and heads batched over all steps, loop only the cores."""
        actor_x = self.actor_stack.forward_sequence(normalized, state[:, : self.actor_state_size], starts)
        critic_x = actor_x
        if self.critic_stack is not None:
            critic_x = self.critic_stack.forward_sequence(normalized, state[:, self.actor_state_size :], starts)
        return self.action_parameterization(actor_x), self.critic_linear(critic_x).squeeze(-1)


def _sequential(modules: list) -> nn.Module:
    return nn.Sequential(*(m for m, _ in modules)) if modules else nn.Identity()


def build_stack(stack: StackPlan, plan: ModelPlan) -> tuple[Stack, StackResult]:
    """Build one stack's modules (raises ShapeError for what only building can find)."""
    result = walk_stack(stack, plan.inputs, build=True)
    shapes = result.part_shapes
    encoder = result.encoder
    if not isinstance(encoder, nn.Module):
        single = isinstance(stack.encoder, list) and len(stack.observe) == 1
        branches = {k: _sequential(v) for k, v in result.branches.items()}
        encoder = SpecEncoder(stack.observe, branches, _sequential(result.trunk or []), shapes["encoder"][0], single)
    items = result.core_items
    if len(items) == 1 and items[0][1] is None and isinstance(items[0][0], ModelCore):
        core = items[0][0]
    else:
        core = SpecCore(items, shapes["core"][0])
    decoder = result.decoder
    if not isinstance(decoder, nn.Module):
        decoder = SpecDecoder(_sequential(decoder or []), shapes["decoder"][0])
    return Stack(encoder, core, decoder), result


def make_custom_component(section: str, cfg: dict, inputs_or_shape: Any, stack: StackPlan) -> tuple[nn.Module, int]:
    """Instantiate a registered Encoder/ModelCore/Decoder with Sample Factory's arguments."""
    cls = COMPONENT_REGISTRIES[section].get(cfg["custom"])
    params = Config(cfg.get("params", {}))
    path = stack.paths[section]
    try:
        if section == "encoder":
            obs_space = spaces.Dict(
                {k: spaces.Box(-math.inf, math.inf, inputs_or_shape[k].shape, "float32") for k in stack.observe}
            )
            module = cls(params, obs_space)
        else:
            module = cls(params, inputs_or_shape[0])
        out_size = int(module.get_out_size())
    except ShapeError:
        raise
    except Exception as exc:  # the plugin's own failure, reported at the spec path that named it
        raise ShapeError(path, f"custom {section} '{cfg['custom']}' failed: {type(exc).__name__}: {exc}") from exc
    return module, out_size


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


def build_model(plan: ModelPlan) -> tuple[ActorCritic, dict[str, StackResult]]:
    """Build and initialise the model; returns it with each stack's layer rows (for summaries)."""
    if plan.custom_model is not None:
        cls = ACTOR_CRITICS.get(plan.custom_model)
        cfg = Config(plan.model.get("params", {}), plan=plan)
        try:
            model = cls(ModelFactory(), plan.obs_space, plan.action_space, cfg)
        except Exception as exc:
            raise ShapeError(
                ("model", "custom"), f"custom model '{plan.custom_model}' failed: {type(exc).__name__}: {exc}"
            ) from exc
        results: dict[str, StackResult] = {}
    else:
        built = [build_stack(s, plan) for s in plan.stacks]
        model = CompiledActorCritic(plan, [b[0] for b in built])
        results = {s.name: b[1] for s, b in zip(plan.stacks, built)}
    initialize_weights(model, plan.init)
    return model, results


def initialize_weights(model: nn.Module, init: dict) -> None:
    """Initialise every weight matrix and bias by parameter name, so nothing is skipped.

    Walking parameters (not module types) reaches layers inside composites, recurrent layers,
    plugin layers and scripted modules alike. Heads get their own gains.
    """
    scheme = init.get("weights", "orthogonal")
    if scheme == "default":
        return
    gain = init.get("gain", math.sqrt(2))
    with torch.no_grad():
        for name, param in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if name.startswith("action_parameterization."):
                g = init.get("policy_gain", 0.01)
            elif name.startswith("critic_linear."):
                g = init.get("value_gain", 1.0)
            else:
                g = gain
            if param.dim() >= 2:
                _init_matrix(param, scheme, g)
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
    model, _ = compile_model_with_rows(spec, obs_space, action_space, smap, env_name)
    return model


def compile_model_with_rows(
    spec: dict, obs_space: Any, action_space: Any, smap: SourceMap | None = None, env_name: str = "the env"
) -> tuple[ActorCritic, dict[str, StackResult]]:
    """Like ``compile_model``, also returning each stack's layer rows."""
    smap = smap or SourceMap()
    plan = plan_model(spec, obs_space, action_space, smap, env_name)
    try:
        return build_model(plan)
    except ShapeError as exc:
        raise SpecError(SpecIssue(smap.locate(exc.path), exc.path, exc.message)) from None
