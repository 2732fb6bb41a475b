"""Batch-1 latency of exported policies against a bare nn.Sequential of the same layers, in one run.

    python benchmarks/export_latency.py

A 48 -> 256 -> 128 -> 12 MLP policy (observation normaliser inside, Box actions clipped to their
bounds) and the same with a GRU core are exported as bundles; each artifact runs batch 1 on one
thread. The bare layers (an nn.Sequential; for the GRU policy, the same layers around an nn.GRU) are
exported to ONNX with the same exporter. Each bundle graph and its bare graph run with the same
session options and call path, calls alternating, in rounds; the figure is the median over rounds.
Target: the bundle's ONNX graph costs at most 15% more than the bare one.
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from gymnasium import spaces
from torch import nn

from sfspec.compiler.build import compile_model
from sfspec.export.bundle import check_bundle, export_bundle

OBS = spaces.Box(-10.0, 10.0, (48,), np.float32)
ACT = spaces.Box(-1.0, 1.0, (12,), np.float32)
CALLS = 2000  # per round
ROUNDS = 5


def policy_spec(core: list) -> dict:
    return {
        "env": {"id": "bench"},
        "model": {"normalize_obs": True, "encoder": [{"linear": 256}, "elu", {"linear": 128}, "elu"], "core": core},
    }


class BareGRU(nn.Module):
    """The GRU policy's layers with nothing around them: no normaliser, reset or action bounds."""

    def __init__(self):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(48, 256), nn.ELU(), nn.Linear(256, 128), nn.ELU())
        self.gru = nn.GRU(128, 128)
        self.head = nn.Linear(128, 12)

    def forward(self, obs: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, h = self.gru(self.mlp(obs).unsqueeze(0), h)
        return self.head(y.squeeze(0)), h


def bare_onnx(module: nn.Module, args: tuple, batch_dims: tuple, names: tuple, path: Path) -> Path:
    """Export a bare module with the same exporter and a dynamic batch."""
    dim = torch.export.Dim("batch", min=1, max=1 << 20)
    with torch.no_grad():
        program = torch.export.export(module.eval(), args, dynamic_shapes=tuple({d: dim} for d in batch_dims))
        torch.onnx.export(
            program, args, dynamo=True, verbose=False, input_names=list(names[0]), output_names=list(names[1])
        ).save(str(path))
    return path


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def interleaved_latency(runs: list[tuple[ort.InferenceSession, dict]]) -> list[tuple[float, float]]:
    """(median, p99) seconds per session, calls alternating between them so drift hits all alike."""
    for s, feed in runs:
        for _ in range(200):
            s.run(None, feed)
    medians: list[list[float]] = [[] for _ in runs]
    p99s: list[list[float]] = [[] for _ in runs]
    for _ in range(ROUNDS):
        times: list[list[float]] = [[] for _ in runs]
        for _ in range(CALLS):
            for k, (s, feed) in enumerate(runs):
                start = time.perf_counter()
                s.run(None, feed)
                times[k].append(time.perf_counter() - start)
        for k, t in enumerate(times):
            medians[k].append(float(np.median(t)))
            p99s[k].append(float(np.percentile(t, 99)))
    return [(float(np.median(m)), float(np.median(p))) for m, p in zip(medians, p99s)]


def bundle_for(core: list, out: Path) -> Path:
    spec = policy_spec(core)
    model = compile_model(spec, OBS, ACT)
    model.preprocessor.update({"obs": torch.randn(1000, 48) * 3.0})
    export_bundle(model, spec, out)
    return out


def main() -> int:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    obs = np.zeros((1, 48), np.float32)
    state = np.zeros((1, 1, 128), np.float32)
    rows, ratios = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bare_mlp = nn.Sequential(nn.Linear(48, 256), nn.ELU(), nn.Linear(256, 128), nn.ELU(), nn.Linear(128, 12))
        cases = {
            "MLP": (
                bare_onnx(bare_mlp, (torch.zeros(2, 48),), (0,), (["obs"], ["action"]), tmp / "bare_mlp.onnx"),
                {"obs": obs},
                bundle_for([], tmp / "mlp"),
                {"obs": obs},
            ),
            "GRU": (
                bare_onnx(
                    BareGRU(),
                    (torch.zeros(2, 48), torch.zeros(1, 2, 128)),
                    (0, 1),
                    (["obs", "h_in"], ["action", "h_out"]),
                    tmp / "bare_gru.onnx",
                ),
                {"obs": obs, "h_in": state},
                bundle_for([{"gru": 128}], tmp / "gru"),
                {"obs": obs, "h_in": state, "reset": np.zeros(1, np.float32)},
            ),
        }
        for name, (bare_path, bare_feed, bundle, bundle_feed) in cases.items():
            # the ONNX graphs: the same session options and call path, calls interleaved
            (bare_med, bare_p99), (onnx_med, onnx_p99) = interleaved_latency(
                [(session(bare_path), bare_feed), (session(bundle / "policy.onnx"), bundle_feed)]
            )
            ratios[name] = onnx_med / bare_med
            rows.append((f"bare {name}, ONNX", bare_med, bare_p99, 1.0))
            rows.append((f"{name} policy, policy.onnx", onnx_med, onnx_p99, ratios[name]))
            # the other artifacts, timed by `sfspec check` (one thread, batch 1)
            for fmt, r in check_bundle(bundle, latency_runs=CALLS, trust=True).items():
                if fmt != "onnx":
                    median, p99 = r["latency_median_ms"] / 1e3, r["latency_p99_ms"] / 1e3
                    rows.append((f"{name} policy, {fmt}", median, p99, median / bare_med))
    print(
        f"\nBatch-1 latency, one thread, {platform.machine()}, torch {torch.__version__}, "
        f"onnxruntime {ort.__version__}, {date.today()}"
    )
    for name, median, p99, ratio in rows:
        print(f"  {name:28} median {median * 1e6:8.1f} us   p99 {p99 * 1e6:8.1f} us   x{ratio:.2f} of bare ONNX")
    for name, ratio in ratios.items():
        print(f"{name} bundle ONNX / bare ONNX: {ratio:.3f} (target <= 1.15)")
    with (Path(__file__).resolve().parent / "results.jsonl").open("a") as f:
        f.write(
            json.dumps(
                {
                    "benchmark": "export_latency",
                    "date": date.today().isoformat(),
                    "torch": torch.__version__,
                    "onnxruntime": ort.__version__,
                    "rows": rows,
                    "onnx_vs_bare": ratios,
                }
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
