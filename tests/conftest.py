"""Shared fixtures: run the CLI in-process and capture what users see."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import textwrap
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import sfspec_testplugin  # noqa: F401 (registers the test environments, layer and components)

from sfspec.cli import main

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.yaml"))


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys):
    """Run ``sfspec ARGS`` in-process; returns exit code, stdout and stderr."""

    def run(*args: str) -> Result:
        code = main(list(args))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def write_yaml(tmp_path: Path, spec: dict, name: str = "spec.yaml") -> str:
    """Write a spec given as a dict to ``tmp_path/name``; returns the path as a string."""
    import yaml

    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return str(path)


@pytest.fixture
def keep_thread_count():
    """A resume adopts its run's thread count; give the test process its own back afterwards."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def rollout_for(spec: dict, steps: int = 64):
    """A spec's env, rollout storage, and a function that collects one rollout into it (CPU)."""
    import torch

    from sfspec.compiler.build import compile_model
    from sfspec.compiler.interface_config import InterfaceConfig
    from sfspec.runtime.config import TrainConfig
    from sfspec.runtime.ppo import Carry, ReturnNormalizer, Rollout, collect_rollout
    from sfspec.runtime.vec_env import make_env

    cpu = torch.device("cpu")
    env = make_env(spec["env"], 0, cpu, InterfaceConfig.from_spec(spec))  # the network's view of it
    model = compile_model(spec, env.observation_space, env.action_space)
    carry = Carry.start(env.reset(seed=0), model, env.num_envs, cpu)
    rollout = Rollout.allocate(steps, carry.obs, model.layout.size, model.state_size, cpu, batched_bootstrap=True)
    cfg = TrainConfig.from_spec(spec)
    return env, rollout, lambda: collect_rollout(model, env, carry, rollout, cfg, ReturnNormalizer())


@contextmanager
def no_host_sync(monkeypatch):
    """Within the block, any read of a tensor back to the host (item, tolist, bool, ...) fails the test."""
    import torch

    def forbidden(*args, **kwargs):
        raise AssertionError("host synchronisation inside the rollout")

    for name in ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "nonzero"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    try:
        yield
    finally:
        monkeypatch.undo()


@pytest.fixture
def write_spec(tmp_path):
    """Write a spec (dedented) to a file and return its path as a string."""

    def write(text: str, name: str = "spec.yaml") -> str:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return str(path)

    return write


# ---------------------------------------------------------------- artifacts built once per session
# Tests that only need *a* trained run or *a* bundle share these (read-only: copy one before changing it).

TINY_SPEC = """\
env: {id: CartPole-v1, num_envs: 4}
model: {encoder: [linear: 8, tanh]}
train: {rollout: 32, steps: 1024, log_interval: 1}
"""


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A trained tiny CartPole run (8 updates, a metrics row each), shared by the whole session."""
    root = tmp_path_factory.mktemp("tiny")
    (root / "spec.yaml").write_text(TINY_SPEC)
    run = root / "run"
    assert main(["train", str(root / "spec.yaml"), "--run-dir", str(run), "--quiet"]) == 0
    return run


@pytest.fixture(scope="session")
def tiny_bundle(tiny_run) -> Path:
    """``tiny_run`` exported in every format (ONNX, TorchScript, torch.export), shared by the whole session."""
    bundle = tiny_run.parent / "bundle"
    assert main(["export", str(tiny_run), "--out", str(bundle)]) == 0
    return bundle


@pytest.fixture(scope="session")
def cpp_replay_binary(request, tmp_path_factory) -> Path:
    """examples/cpp/replay_golden built against this torch: once per session, and kept in pytest's cache
    while its sources, build script and torch are unchanged (a fresh checkout, as in CI, builds it)."""
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        pytest.skip("no C++ compiler here")
    import torch

    cpp = ROOT / "examples" / "cpp"
    digest = hashlib.sha256()
    for part in (cpp / "build.sh", cpp / "replay_golden.cpp"):
        digest.update(part.read_bytes())
    digest.update(f"{torch.__version__} {torch.__file__} {os.environ.get('CXX', '')}".encode())
    cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
    folder = Path(cache.mkdir("cpp_replay_golden")) if cache is not None else tmp_path_factory.mktemp("cpp")
    binary = folder / f"replay_golden-{digest.hexdigest()[:16]}"
    if not binary.exists():
        partial = folder / f"{binary.name}.partial"
        build = subprocess.run(["bash", str(cpp / "build.sh"), str(partial)], capture_output=True, text=True)
        assert build.returncode == 0, build.stderr[-2000:]
        partial.replace(binary)  # whole or absent: an interrupted build is never reused
    return binary
