"""Small bundled tasks for what classic control lacks: memory, pixels, and a robot with privileged state."""

from __future__ import annotations

import math

import torch

from sfspec.envs.base import TensorEnv
from sfspec.envs.catalogue import PARAMETERS, memory_spaces, pixel_spaces, reach_spaces


class MemoryEnv(TensorEnv):
    """Remember a cue: shown at the first step only, asked for after ``delay`` blank steps.

    Reward 1 for naming the cue at the query step, else 0: a memoryless policy earns
    1/num_cues on average, one with memory earns 1.
    """

    env_id = "sfspec/Memory-v0"
    state_dim = 2  # cue, time
    default_max_episode_steps = 1000

    def __init__(
        self,
        num_envs: int,
        device="cpu",
        dtype=torch.float32,
        seed=None,
        max_episode_steps=None,
        num_cues: int = 4,
        delay: int = 8,
    ):
        self.num_cues, self.delay = int(num_cues), int(delay)
        self.single_observation_space, self.single_action_space = memory_spaces(self.num_cues, self.delay)
        super().__init__(num_envs, device, dtype, seed, max_episode_steps)

    def _initial_state(self) -> torch.Tensor:
        cue = torch.randint(0, self.num_cues, (self.num_envs,), generator=self.generator, device=self.device)
        return torch.stack([cue.to(self.dtype), torch.zeros_like(cue, dtype=self.dtype)], dim=1)

    def _dynamics(self, state: torch.Tensor, actions: torch.Tensor):
        cue, t = state[:, 0], state[:, 1]
        query = t == self.delay
        reward = (query & (actions == cue.long())).to(self.dtype)
        return torch.stack([cue, t + 1], dim=1), reward, query

    def _observe(self, state: torch.Tensor) -> torch.Tensor:
        cue, t = state[:, 0].long(), state[:, 1]
        shown = torch.nn.functional.one_hot(cue, self.num_cues).to(torch.float32) * (t == 0).unsqueeze(1)
        return torch.cat([shown, (t == self.delay).to(torch.float32).unsqueeze(1)], dim=1)


class PixelGoalEnv(TensorEnv):
    """Walk to the goal on a grid seen only as an RGB picture (agent red, goal green).

    Reward 1 at the goal (the episode ends), -0.01 per step otherwise; 50 steps at most.
    """

    env_id = "sfspec/PixelGoal-v0"
    state_dim = 4  # agent x, y, goal x, y
    default_max_episode_steps = 50
    MOVES = ((0, -1), (0, 1), (-1, 0), (1, 0))  # up, down, left, right

    def __init__(
        self,
        num_envs: int,
        device="cpu",
        dtype=torch.float32,
        seed=None,
        max_episode_steps=None,
        grid: int = 8,
        cell: int = 3,
    ):
        self.grid, self.cell = int(grid), int(cell)
        self.single_observation_space, self.single_action_space = pixel_spaces(self.grid, self.cell)
        super().__init__(num_envs, device, dtype, seed, max_episode_steps)
        self.moves = torch.tensor(self.MOVES, dtype=dtype, device=self.device)

    def _initial_state(self) -> torch.Tensor:
        cells = torch.randint(0, self.grid, (self.num_envs, 4), generator=self.generator, device=self.device)
        same = (cells[:, :2] == cells[:, 2:]).all(dim=1, keepdim=True)
        goal = torch.where(same, (cells[:, 2:] + torch.tensor([1, 0], device=self.device)) % self.grid, cells[:, 2:])
        return torch.cat([cells[:, :2], goal], dim=1).to(self.dtype)

    def _dynamics(self, state: torch.Tensor, actions: torch.Tensor):
        agent = (state[:, :2] + self.moves[actions]).clamp(0, self.grid - 1)
        at_goal = (agent == state[:, 2:]).all(dim=1)
        reward = torch.where(at_goal, 1.0, -0.01).to(self.dtype)
        return torch.cat([agent, state[:, 2:]], dim=1), reward, at_goal

    def _observe(self, state: torch.Tensor) -> torch.Tensor:
        cells = state.long()
        grid = torch.zeros(self.num_envs, self.grid, self.grid, 3, dtype=torch.uint8, device=self.device)
        rows = torch.arange(self.num_envs, device=self.device)
        grid[rows, cells[:, 1], cells[:, 0], 0] = 255
        grid[rows, cells[:, 3], cells[:, 2], 1] = 255
        return grid.repeat_interleave(self.cell, dim=1).repeat_interleave(self.cell, dim=2)


class ReachEnv(TensorEnv):
    """A planar 2-link arm brings its fingertip to a target.

    The actor sees its joints and a camera-like target estimate with a per-episode bias; the
    critic may also observe the privileged truth (target and fingertip). Reward: minus the
    distance, minus a small torque cost; 100 steps per episode.
    """

    env_id = "sfspec/Reach-v0"
    state_dim = 8  # q1, q2, dq1, dq2, target x, y, camera bias x, y
    default_max_episode_steps = 100
    parameters = PARAMETERS[env_id]  # link_length (both links), gain (torque per action), damping
    DT, BIAS_STD = 0.05, 0.05

    def __init__(self, num_envs: int, device="cpu", dtype=torch.float32, seed=None, max_episode_steps=None):
        self.single_observation_space, self.single_action_space = reach_spaces()
        super().__init__(num_envs, device, dtype, seed, max_episode_steps)

    def _initial_state(self) -> torch.Tensor:
        q = self._uniform(-math.pi, math.pi, 2)
        dq = torch.zeros_like(q)
        # Targets within the arm's reach whatever its drawn link length (0.2-0.9 at the nominal 0.5).
        reach = self._row("link_length") / PARAMETERS[self.env_id]["link_length"]
        radius = self._uniform(0.2, 0.9, 1) * reach
        angle = self._uniform(-math.pi, math.pi, 1)
        target = torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
        bias = torch.randn(self.num_envs, 2, generator=self.generator, device=self.device, dtype=self.dtype)
        return torch.cat([q, dq, target, bias * self.BIAS_STD], dim=1)

    def _fingertip(self, q: torch.Tensor) -> torch.Tensor:
        a, b = q[:, 0], q[:, 0] + q[:, 1]
        return self._row("link_length") * torch.stack([torch.cos(a) + torch.cos(b), torch.sin(a) + torch.sin(b)], dim=1)

    def _dynamics(self, state: torch.Tensor, actions: torch.Tensor):
        torque = actions.clamp(-1.0, 1.0)
        q, dq = state[:, :2], state[:, 2:4]
        dq = dq + self.DT * (self._row("gain") * torque - self._row("damping") * dq)
        q = torch.remainder(q + self.DT * dq + math.pi, 2 * math.pi) - math.pi
        distance = (self._fingertip(q) - state[:, 4:6]).norm(dim=1)
        reward = -distance - 0.01 * (torque * torque).sum(dim=1)
        terminated = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        return torch.cat([q, dq, state[:, 4:]], dim=1), reward, terminated

    def _row(self, name: str) -> torch.Tensor:
        """Parameter ``name`` as a ``(num_envs, 1)`` column in the state's dtype."""
        return self._coef(self.params[name]).unsqueeze(1)

    def _observe(self, state: torch.Tensor) -> dict[str, torch.Tensor]:
        q = state[:, :2]
        return {
            "proprio": torch.cat([torch.sin(q), torch.cos(q), state[:, 2:4]], dim=1).float(),
            "target_seen": (state[:, 4:6] + state[:, 6:8]).float(),
            "privileged": torch.cat([state[:, 4:6], self._fingertip(q)], dim=1).float(),
        }
