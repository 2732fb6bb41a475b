"""The robot interface as tensors: robot units to network units and back, and observation history.

One module serves training (``sfspec.runtime.interface`` wraps the environment with it) and every
exported artifact (``DeployPolicy`` holds it), so what the network saw in training is what it sees
on the robot. Its constants are non-persistent buffers: checkpoints and weight hashes do not change.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from sfspec.compiler.interface_config import InterfaceConfig, Transform
from sfspec.compiler.spaces import ObsInput, flatten_space, observation_inputs


class RobotInterface(nn.Module):
    """``observe`` (robot units to network units), ``stack`` (history), ``to_robot`` (actions)."""

    def __init__(self, cfg: InterfaceConfig, obs_space: Any, action_space: Any):
        super().__init__()
        self.cfg = cfg
        self.obs_space, self.action_space = obs_space, action_space  # the env's own (robot units)
        leaves = flatten_space(obs_space)
        self.raw_inputs: dict[str, ObsInput] = observation_inputs(obs_space)
        self.keys = list(cfg.observations)
        self.histories = cfg.histories
        self.frame_sizes = {k: int(np.prod(leaves[k].shape)) for k in self.keys}
        self._names: dict[str, tuple[str, str, str | None, str | None]] = {}
        for i, key in enumerate(self.keys):  # buffer names may not contain '.', input names may
            self._names[key] = self._register(f"obs_{i}", cfg.observations[key], tuple(leaves[key].shape))
        self.action_size = int(np.prod(action_space.shape)) if cfg.actions is not None or cfg.last_action else 0
        self.scales_actions = cfg.actions is not None
        if cfg.actions is not None:
            self._action_names = self._register("action", cfg.actions, (self.action_size,))

    def _register(self, prefix: str, t: Transform, shape: tuple) -> tuple[str, str, str | None, str | None]:
        """Register one transform's constants shaped like one frame; returns their buffer names."""
        size = int(np.prod(shape))

        def put(name: str, values: tuple[float, ...]) -> str:
            array = np.broadcast_to(np.asarray(values, dtype=np.float32), (size,)).reshape(shape)
            self.register_buffer(f"{prefix}_{name}", torch.tensor(array), persistent=False)
            return f"{prefix}_{name}"

        low = put("low", t.clip[0]) if t.clip is not None else None
        high = put("high", t.clip[1]) if t.clip is not None else None
        return put("scale", t.scale), put("offset", t.offset), low, high

    @property
    def last_action(self) -> bool:
        """Whether the previous action is an input."""
        return self.cfg.last_action

    def observe(self, key: str, x: torch.Tensor) -> torch.Tensor:
        """One input in network units: ``clip((x - offset) * scale, low, high)`` (float32)."""
        if key not in self._names:
            return x
        scale, offset, low, high = self._names[key]
        out = (x.to(torch.float32) - getattr(self, offset)) * getattr(self, scale)
        return _clip(out, self, low, high)

    def constants(self, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``key``'s (scale, offset), shaped like one frame."""
        scale, offset, _, _ = self._names[key]
        return getattr(self, scale), getattr(self, offset)

    def stack(self, key: str, history: torch.Tensor, frame: torch.Tensor, reset: torch.Tensor) -> torch.Tensor:
        """The (B, H, n) history with ``frame`` (network units) as its newest entry; every entry is
        ``frame`` where ``reset`` (B,) is set (an episode's first step)."""
        frame = frame.reshape(frame.shape[0], 1, self.frame_sizes[key])
        pushed = torch.cat([history[:, 1:], frame], dim=1)
        return torch.where(reset.reshape(-1, 1, 1) > 0.5, frame.expand_as(history), pushed)

    def to_robot(self, actions: torch.Tensor) -> torch.Tensor:
        """Flat network actions (B, A) in robot units: ``clip(offset + scale * action, low, high)``."""
        if not self.scales_actions:
            return actions
        scale, offset, low, high = self._action_names
        return _clip(getattr(self, offset) + getattr(self, scale) * actions, self, low, high)

    def history_shape(self, key: str) -> tuple[int, int]:
        """One row of ``key``'s history state: (H, components)."""
        return (self.histories[key], self.frame_sizes[key])


def _clip(x: torch.Tensor, owner: nn.Module, low: str | None, high: str | None) -> torch.Tensor:
    if low is None:
        return x
    return torch.minimum(torch.maximum(x, getattr(owner, low)), getattr(owner, high))
