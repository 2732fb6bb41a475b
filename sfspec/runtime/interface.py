"""The robot interface in training: the env adapter the policy sees when the spec has ``interface:``.

``InterfaceAdapter`` wraps an env adapter (plain, or with noise and delays: those are the robot's,
in robot units) and keeps its interface. Observations reach the policy in network units, with
their histories stacked and the previous action added; the policy's actions reach the env in robot
units. It applies the same ``RobotInterface`` module an exported bundle holds, on the env's device,
without host synchronisation; its buffers are part of ``snapshot()`` so ``--resume`` is exact.
"""

from __future__ import annotations

from typing import Any

import torch

from sfspec.compiler.interface import RobotInterface
from sfspec.compiler.interface_config import LAST_ACTION, InterfaceConfig, policy_spaces
from sfspec.compiler.spaces import ActionLayout, action_layout, flatten_space

ObsDict = dict[str, torch.Tensor]


class InterfaceAdapter:
    """An env adapter in the network's units: scaled, stacked observations (and the last action) in, actions out."""

    def __init__(self, inner: Any, cfg: InterfaceConfig):
        self.inner = inner
        self.env_id, self.device, self.num_envs = inner.env_id, inner.device, inner.num_envs
        self.on_device = inner.on_device
        self.next_step_reset = getattr(inner, "next_step_reset", False)
        self.interface = RobotInterface(cfg, inner.observation_space, inner.action_space).to(self.device)
        self.observation_space, self.action_space = policy_spaces(cfg, inner.observation_space, inner.action_space)
        self.keys = list(flatten_space(self.observation_space))
        self._inner_layout = action_layout(inner.action_space)
        self._history: dict[str, torch.Tensor] = {}
        self._last_action: torch.Tensor | None = None
        self._last: ObsDict | None = None  # what the policy saw last (returned by restore)

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (copying): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def reset(self, seed: int | None = None) -> ObsDict:
        """Reset every environment: histories hold the first frame H times, the last action is zero."""
        return self._start(self.inner.reset(seed=seed))

    def _start(self, obs: ObsDict) -> ObsDict:
        """Every row at an episode's first step: fresh histories and a zero last action."""
        n = self.num_envs
        self._history = {
            k: torch.zeros(n, *self.interface.history_shape(k), device=self.device) for k in self.interface.histories
        }
        if self.interface.last_action:
            self._last_action = torch.zeros(n, self.interface.action_size, device=self.device)
        self._last = self._observe(obs, torch.ones(n, dtype=torch.bool, device=self.device))
        return self._last

    def step(self, actions: torch.Tensor, layout: ActionLayout):
        """Send network-unit actions to the env in robot units; return what the policy sees next."""
        step = self.inner.step(self.interface.to_robot(actions), self._inner_layout)
        starts = ~step.valid if self.next_step_reset else step.terminated | step.truncated
        final = None
        if step.final_obs is not None and not self.next_step_reset:  # the ending episode, one step on
            final = self._peek(step.final_obs, actions)
        if self._last_action is not None:
            self._last_action = torch.where(starts.unsqueeze(1), 0.0, actions.to(torch.float32))
        obs = self._observe(step.obs, starts)
        if step.final_obs is not None and self.next_step_reset:  # such an env's final observation is its obs
            final = obs
        self._last = obs
        return type(step)(obs, step.reward, step.terminated, step.truncated, final, step.valid)

    def _observe(self, obs: ObsDict, starts: torch.Tensor) -> ObsDict:
        """Network-unit inputs; histories pushed (filled where ``starts``), the last action added."""
        out, self._history = self._view(obs, starts, self._last_action)
        return out

    def _peek(self, obs: ObsDict, actions: torch.Tensor) -> ObsDict:
        """What the policy would see after ``obs`` within the same episode (for bootstrapping), state untouched."""
        within = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        last = actions.to(torch.float32) if self._last_action is not None else None
        return self._view(obs, within, last)[0]

    def _view(self, obs: ObsDict, starts: torch.Tensor, last_action: torch.Tensor | None) -> tuple[ObsDict, dict]:
        """The network's inputs after ``obs`` (histories pushed, filled where ``starts``), and the new histories."""
        out, histories = {}, {}
        for key, value in obs.items():
            frame = self.interface.observe(key, value)
            if key in self._history:
                histories[key] = self.interface.stack(key, self._history[key], frame, starts)
                frame = histories[key].flatten(1)
            out[key] = frame
        if last_action is not None:
            out[LAST_ACTION] = last_action
        return out, histories

    def close(self) -> None:
        """Release the environments."""
        self.inner.close()

    def snapshot(self) -> dict:
        """The inner env's snapshot with the histories and the last action (for exact resumes)."""
        return {
            **self.inner.snapshot(),
            "interface": {
                "history": {k: v.clone() for k, v in self._history.items()},
                "last_action": self._last_action.clone() if self._last_action is not None else None,
                "last": {k: v.clone() for k, v in self._last.items()},
            },
        }

    def restore(self, snapshot: dict) -> ObsDict:
        """Continue from a snapshot; returns what the policy saw last."""
        obs = self.inner.restore(snapshot)
        saved = snapshot.get("interface")
        if saved is None:  # a checkpoint without the interface's buffers: start them from the current frame
            return self._start(obs)
        self._history = {k: v.to(self.device) for k, v in saved["history"].items()}
        la = saved["last_action"]
        self._last_action = la.to(self.device) if la is not None else None
        self._last = {k: v.to(self.device) for k, v in saved["last"].items()}
        return self._last
