"""LeanAdam: torch's fused Adam, bit for bit and with the same state_dict, without importing torch._dynamo."""

from __future__ import annotations

import subprocess
import sys

import torch
from conftest import write_yaml

from sfspec.runtime.optim import LeanAdam


def _train(optimizer_class, steps: int = 12):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2))
    optimizer = optimizer_class(model.parameters(), lr=1e-3, eps=1e-5, fused=True)
    for i in range(steps):
        optimizer.zero_grad()
        model(torch.randn(16, 4)).pow(2).mean().backward()
        optimizer.step()
        if i == steps // 2:  # the KL-adaptive schedule changes lr between steps
            optimizer.param_groups[0]["lr"] = 5e-4
    return model, optimizer


def test_lean_adam_steps_exactly_as_torchs_fused_adam_and_saves_the_same_state():
    (lean, lean_opt), (ref, ref_opt) = _train(LeanAdam), _train(torch.optim.Adam)
    assert all(torch.equal(a, b) for a, b in zip(lean.state_dict().values(), ref.state_dict().values()))
    a, b = lean_opt.state_dict(), ref_opt.state_dict()
    assert a["param_groups"] == b["param_groups"]
    assert all(torch.equal(a["state"][i][k], b["state"][i][k]) for i in b["state"] for k in b["state"][i])
    restored = LeanAdam(lean.parameters(), lr=1.0, eps=1e-5, fused=True)
    restored.load_state_dict(b)  # a checkpoint written with torch.optim.Adam loads into it
    assert restored.param_groups[0]["lr"] == 5e-4


def test_training_does_not_import_torch_dynamo(tmp_path):
    spec = {
        "env": {"id": "sfspec/CartPole-v1", "num_envs": 4},
        "model": {"encoder": [{"linear": 16}, "tanh"]},
        "train": {"steps": 128, "rollout": 16, "epochs": 2, "minibatches": 2},
    }
    code = (
        "import sys; from sfspec.cli import main; "
        f"code = main(['train', {write_yaml(tmp_path, spec)!r}, '--run-dir', {str(tmp_path / 'run')!r}, '-q']); "
        "assert 'torch._dynamo' not in sys.modules, 'torch._dynamo was imported'; sys.exit(code)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
