"""A plugin for the tests: environments with every kind of space, a custom layer and
components ported from Sample Factory's custom-model template (only the imports changed)."""

from __future__ import annotations

from typing import ClassVar

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from sfspec.compiler.components import Config, Decoder, Encoder, ModelCore
from sfspec.compiler.model import ActorCritic
from sfspec.compiler.registry import ACTOR_CRITICS, CORES, DECODERS, ENCODERS, register_layer
from sfspec.envs import TensorEnv, register_tensor_env


class SpaceEnv(gym.Env):
    """Random observations from any space; episodes of 20 steps."""

    def __init__(self, observation_space: gym.Space, action_space: gym.Space):
        self.observation_space = observation_space
        self.action_space = action_space
        self._t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.observation_space.seed(seed)
        self._t = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        assert self.action_space.contains(action), action
        self._t += 1
        return self.observation_space.sample(), 0.0, self._t >= 20, False, {}


BOX4 = spaces.Box(-1.0, 1.0, (4,), np.float32)
SPACES = {
    "Dict": (
        spaces.Dict(
            {
                "camera": spaces.Box(0, 255, (48, 48, 3), np.uint8),
                "proprio": spaces.Box(-np.inf, np.inf, (12,), np.float32),
                "privileged": spaces.Box(-np.inf, np.inf, (6,), np.float32),
            }
        ),
        spaces.Box(-1.0, 1.0, (4,), np.float32),
    ),
    "Image": (spaces.Box(0, 255, (3, 64, 64), np.uint8), spaces.Discrete(5)),
    "Mixed": (
        spaces.Tuple((spaces.Discrete(4, start=1), spaces.MultiDiscrete([3, 2]), spaces.MultiBinary(5))),
        spaces.Tuple((spaces.Discrete(3), spaces.Box(-2.0, 2.0, (2,), np.float32))),
    ),
    "Masked": (
        spaces.Dict({"state": BOX4, "action_mask": spaces.MultiBinary(6)}),
        spaces.Discrete(6),
    ),
    "MultiDiscrete": (BOX4, spaces.MultiDiscrete([3, 4])),
    "MultiBinary": (BOX4, spaces.MultiBinary(3)),
    "DictAction": (BOX4, spaces.Dict({"move": spaces.Box(-1.0, 1.0, (2,), np.float32), "grip": spaces.Discrete(2)})),
    "Unbounded": (BOX4, spaces.Box(-np.inf, np.inf, (2,), np.float32)),
    "Nested": (
        spaces.Dict({"robot": spaces.Dict({"joints": BOX4, "cell": spaces.Discrete(7)}), "goal": BOX4}),
        spaces.Discrete(2),
    ),
}

for _name, (_obs, _act) in SPACES.items():
    gym.register(
        f"SpaceTest/{_name}-v0", entry_point=SpaceEnv, kwargs={"observation_space": _obs, "action_space": _act}
    )


# ---------------------------------------------------------------- a custom layer with its schema


def _infer_same(call):
    return call.in_shape


@register_layer(
    "scaled_tanh",
    params={"scale": {"type": "number", "exclusiveMinimum": 0, "default": 1.0}},
    primary="scale",
    infer=_infer_same,
)
def build_scaled_tanh(call):
    """scale * tanh(x)."""
    return ScaledTanh(call.args["scale"])


class ScaledTanh(nn.Module):
    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return self.scale * torch.tanh(x)


@register_layer(
    "scripted_linear",
    params={"features": {"type": "integer", "minimum": 1}},
    required=("features",),
    primary="features",
)
def build_scripted_linear(call):
    """A TorchScript linear layer, and no shape rule: the compiler probes its output shape."""
    return torch.jit.script(nn.Linear(call.in_shape[-1], call.args["features"]))


# ---------------------------------------------------------------- Sample Factory's template, ported


class CustomEncoder(Encoder):
    params_schema: ClassVar[dict] = {
        "type": "object",
        "properties": {"hidden": {"type": "integer", "minimum": 1}},
        "required": ["hidden"],
        "additionalProperties": False,
    }

    def __init__(self, cfg: Config, obs_space):
        super().__init__(cfg)
        size = sum(int(np.prod(s.shape)) for s in obs_space.values())
        self.net = nn.Sequential(nn.Linear(size, cfg.hidden), nn.ReLU())
        self.out = cfg.hidden

    def forward(self, obs_dict):
        return self.net(torch.cat([v.flatten(1) for v in obs_dict.values()], dim=1))

    def get_out_size(self) -> int:
        return self.out


class CustomCore(ModelCore):
    def __init__(self, cfg: Config, input_size: int):
        super().__init__(cfg)
        self.size = cfg.get("size", 32)
        self.core = nn.GRUCell(input_size, self.size)

    def forward(self, head_output, rnn_states):
        new = self.core(head_output, rnn_states)
        return new, new

    def get_out_size(self) -> int:
        return self.size

    def state_size(self) -> int:
        return self.size


class CustomDecoder(Decoder):
    def __init__(self, cfg: Config, decoder_input_size: int):
        super().__init__(cfg)
        self.net = nn.Sequential(nn.Linear(decoder_input_size, 16), nn.Tanh())

    def forward(self, core_output):
        return self.net(core_output)

    def get_out_size(self) -> int:
        return 16


class CustomActorCritic(ActorCritic):
    def __init__(self, model_factory, obs_space, action_space, cfg: Config):
        super().__init__(obs_space, action_space, cfg)
        keys = list(self.inputs)
        enc_space = spaces.Dict({k: spaces.Box(-1, 1, self.inputs[k].shape) for k in keys})
        self.encoder = CustomEncoder(Config({"hidden": cfg.hidden}), enc_space)
        self.core = CustomCore(Config({"size": 24}), self.encoder.get_out_size())
        self.decoder = CustomDecoder(cfg, self.core.get_out_size())
        self.critic_linear = nn.Linear(self.decoder.get_out_size(), 1)
        self.action_parameterization = self.get_action_parameterization(self.decoder.get_out_size())
        self.state_size = self.core.state_size()

    def forward(self, normalized_obs_dict, rnn_states, values_only=False):
        x = self.encoder(normalized_obs_dict)
        x, new_states = self.core(x, rnn_states)
        x = self.decoder(x)
        out = {"values": self.critic_linear(x).squeeze(-1), "new_rnn_states": new_states}
        if not values_only:
            out["action_params"] = self.action_parameterization(x)
        return out


ENCODERS.register("sf_encoder", CustomEncoder)
CORES.register("sf_core", CustomCore)
DECODERS.register("sf_decoder", CustomDecoder)
ACTOR_CRITICS.register("sf_actor_critic", CustomActorCritic)


# ---------------------------------------------------------------- environments for runtime tests


class RaisesEnv(SpaceEnv):
    """Raises inside step() after ``after`` steps, like a simulator that crashes."""

    def __init__(self, after: int = 50):
        super().__init__(BOX4, spaces.Discrete(2))
        self.after = after
        self.total = 0

    def step(self, action):
        self.total += 1
        if self.total > self.after:
            raise RuntimeError("simulator exploded")
        return super().step(action)


gym.register("SpaceTest/Raises-v0", entry_point=RaisesEnv)


class CounterEnv(TensorEnv):
    """obs = [t]; reward 1 per step; truncated after 3 steps (never terminates). NaN rewards from ``nan_at``."""

    env_id = "sfspec/Counter-v0"
    state_dim = 1
    default_max_episode_steps = 3

    def __init__(self, num_envs, device="cpu", dtype=torch.float32, seed=None, max_episode_steps=None, nan_at=-1):
        self.single_observation_space = spaces.Box(0.0, 100.0, (1,), np.float32)
        self.single_action_space = spaces.Discrete(2)
        self.nan_at = nan_at
        self.steps_taken = 0
        super().__init__(num_envs, device, dtype, seed, max_episode_steps)

    def _initial_state(self):
        return torch.zeros(self.num_envs, 1, dtype=self.dtype, device=self.device)

    def _dynamics(self, state, actions):
        self.steps_taken += 1
        reward = torch.ones(self.num_envs, dtype=self.dtype, device=self.device)
        if 0 <= self.nan_at <= self.steps_taken:
            reward = reward * float("nan")
        return state + 1, reward, torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)

    def _observe(self, state):
        return state.to(torch.float32).clone()


register_tensor_env("sfspec/Counter-v0", CounterEnv)
