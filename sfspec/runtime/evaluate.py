"""``sfspec eval``: the trained policy, deterministic, on fresh environments."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from sfspec.compiler.interface_config import InterfaceConfig
from sfspec.compiler.model import ActorCritic
from sfspec.runtime.vec_env import make_env
from sfspec.spec.config import EnvConfig

EVAL_SEED_OFFSET = 10_000  # evaluation environments never replay training seeds


@dataclass
class EvalResult:
    """Returns and lengths of the evaluated episodes."""

    returns: list[float]
    lengths: list[int]

    def summary(self) -> dict:
        """What ``--json`` prints."""
        r = torch.tensor(self.returns, dtype=torch.float64)
        return {
            "episodes": len(self.returns),
            "return_mean": float(r.mean()),
            "return_std": float(r.std(unbiased=False)),
            "return_min": float(r.min()),
            "return_max": float(r.max()),
            "length_mean": float(torch.tensor(self.lengths, dtype=torch.float64).mean()),
        }


@torch.no_grad()
def evaluate(
    model: ActorCritic, env_cfg: dict, episodes: int, seed: int, device: torch.device, max_steps: int = 1_000_000
) -> EvalResult:
    """Run deterministic actions until ``episodes`` episodes have finished (the first of each env counts)."""
    model.eval()
    memory: dict[str, torch.Tensor] = {}

    def act(obs: dict, done: torch.Tensor | None) -> torch.Tensor:
        n = next(iter(obs.values())).shape[0]
        state = memory.get("state", model.initial_state(n, device))
        if done is not None:
            state = state * (~done).unsqueeze(-1).to(state.dtype)
        actions, memory["state"] = model.deterministic_actions(obs, state)
        return actions

    interface = model.robot_interface.cfg if model.robot_interface is not None else None
    return run_episodes(act, model.layout, env_cfg, episodes, seed, device, max_steps, interface=interface)


def run_episodes(
    act,
    layout,
    env_cfg: dict,
    episodes: int,
    seed: int,
    device: torch.device,
    max_steps: int = 1_000_000,
    num_envs: int | None = None,
    interface: InterfaceConfig | None = None,
) -> EvalResult:
    """Step fresh environments with ``act(obs, done_last_step)`` until ``episodes`` episodes finish.

    ``num_envs`` defaults to ``min(episodes, env.num_envs)``; a fixed-batch bundle sets it. With an
    ``interface``, ``act`` sees and chooses in the network's units (a bundle holds its interface: none).
    """
    num_envs = num_envs or min(episodes, EnvConfig.from_spec(env_cfg).num_envs)
    env = make_env({**env_cfg, "num_envs": num_envs}, seed + EVAL_SEED_OFFSET, device, interface)
    try:
        obs = env.reset(seed=seed + EVAL_SEED_OFFSET)
        ep_return = torch.zeros(num_envs, device=device)
        ep_length = torch.zeros(num_envs, device=device)
        returns: list[float] = []
        lengths: list[int] = []
        done = None
        for _ in range(max_steps):
            step = env.step(act(obs, done), layout)
            ep_return += step.reward
            ep_length += 1 if step.valid is None else step.valid.to(ep_length.dtype)
            done = step.terminated | step.truncated
            if done.any():
                for i in torch.nonzero(done).flatten().tolist():
                    if len(returns) < episodes:
                        returns.append(float(ep_return[i]))
                        lengths.append(int(ep_length[i]))
                ep_return = ep_return * ~done
                ep_length = ep_length * ~done
            if len(returns) >= episodes:
                break
            obs = step.obs
        return EvalResult(returns, lengths)
    finally:
        env.close()


def record_video(model: ActorCritic, env_cfg: dict, out_dir: Path, seed: int, device: torch.device) -> Path:
    """Record one deterministic episode to an MP4 where the environment renders (gymnasium envs).

    The episode runs through the same adapters as training (and the spec's robot interface, if any).
    """
    import gymnasium as gym
    from gymnasium.vector import AutoresetMode, SyncVectorEnv
    from gymnasium.wrappers import RecordVideo

    from sfspec.runtime.interface import InterfaceAdapter
    from sfspec.runtime.vec_env import GymVectorAdapter
    from sfspec.spec.environment import ENVPOOL_ENGINE_KWARGS

    # gymnasium's own env renders, also for a spec trained on EnvPool: without EnvPool's engine options
    kwargs = {k: v for k, v in (env_cfg.get("kwargs") or {}).items() if k not in ENVPOOL_ENGINE_KWARGS}

    def make() -> gym.Env:
        env = gym.make(env_cfg["id"], render_mode="rgb_array", **kwargs)
        return RecordVideo(env, str(out_dir), episode_trigger=lambda episode: episode == 0, disable_logger=True)

    vector = SyncVectorEnv([make], autoreset_mode=AutoresetMode.SAME_STEP)
    env = GymVectorAdapter(vector, env_cfg["id"], device)
    if model.robot_interface is not None:
        env = InterfaceAdapter(env, model.robot_interface.cfg)
    try:
        obs = env.reset(seed=seed + EVAL_SEED_OFFSET)
        state = model.initial_state(1, device)
        while True:
            actions, state = model.deterministic_actions(obs, state)
            step = env.step(actions, model.layout)
            if bool(step.terminated[0] or step.truncated[0]):
                break
            obs = step.obs
    finally:
        env.close()
    return out_dir
