"""``sfspec eval BUNDLE``: an exported bundle in its environment, exactly like a checkpoint.

Export builds on the runtime's episode loop (``run_episodes``); the runtime never imports export.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sfspec.compiler.spaces import action_layout
from sfspec.export.errors import ExportError, ObservationError
from sfspec.export.integrity import read_manifest
from sfspec.export.runner import PolicyRunner
from sfspec.runtime.evaluate import EvalResult, run_episodes
from sfspec.runtime.vec_env import make_env
from sfspec.spec.config import EnvConfig


def evaluate_bundle(bundle: Path, env_cfg: dict, episodes: int, seed: int, backend: str = "onnx") -> EvalResult:
    """Evaluate an exported bundle in the environment, exactly like a checkpoint (onnxruntime by default).

    The bundle's files are verified (size and SHA-256) before loading: a BundleError says what is wrong.
    """
    fixed = read_manifest(bundle)["batch"]
    configured = EnvConfig.from_spec(env_cfg).num_envs
    num_envs = min(episodes, configured) if fixed == "dynamic" else int(fixed)
    runner = PolicyRunner(bundle, backend, batch=num_envs)
    keys = [o["name"] for o in runner.obs]

    def act(obs: dict, done: torch.Tensor | None) -> torch.Tensor:
        if done is not None and bool(done.any()):
            runner.reset(torch.nonzero(done).flatten().tolist())
        try:
            out = runner.act({k: obs[k].cpu().numpy() for k in keys if k in obs})
        except ObservationError as exc:
            raise ExportError(f"{bundle}: the environment's observations do not fit the bundle: {exc}") from None
        parts = list(out.values()) if isinstance(out, dict) else [out]
        return torch.cat([torch.as_tensor(p).reshape(num_envs, -1).to(torch.float32) for p in parts], dim=1)

    env_cfg = {**env_cfg, "num_envs": num_envs}
    probe = make_env({**env_cfg, "num_envs": 1}, 0, torch.device("cpu"))
    layout = action_layout(probe.action_space)
    probe.close()
    return run_episodes(act, layout, env_cfg, episodes, seed, torch.device("cpu"), num_envs=num_envs)
