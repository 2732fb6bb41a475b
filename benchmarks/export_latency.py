"""Batch-1 latency of exported policies against a bare nn.Sequential of the same layers, in one run.

    python benchmarks/export_latency.py

A 48 -> 256 -> 128 -> 12 MLP policy (observation normaliser inside, Box actions clipped to their
bounds) and the same with a GRU core are exported as bundles; each artifact runs batch 1 on one
thread. The bare nn.Sequential of the same linear layers is exported to ONNX with the same exporter.
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
RUNS = 2000


def policy_spec(core: list) -> dict:
    return {
        "env": {"id": "bench"},
        "model": {"normalize_obs": True, "encoder": [{"linear": 256}, "elu", {"linear": 128}, "elu"], "core": core},
    }


def ort_latency(path: Path, feeds: dict) -> tuple[float, float]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(100):
        session.run(None, feeds)
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3), float(np.percentile(times, 99) * 1e3)


def bare_onnx(out: Path) -> Path:
    bare = nn.Sequential(nn.Linear(48, 256), nn.ELU(), nn.Linear(256, 128), nn.ELU(), nn.Linear(128, 12)).eval()
    path = out / "bare.onnx"
    dim = torch.export.Dim("batch", min=1, max=1 << 20)
    with torch.no_grad():
        program = torch.export.export(bare, (torch.zeros(2, 48),), dynamic_shapes=({0: dim},))
        torch.onnx.export(
            program, (torch.zeros(2, 48),), dynamo=True, verbose=False, input_names=["obs"], output_names=["action"]
        ).save(str(path))
    return path


def main() -> int:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bare_median, bare_p99 = ort_latency(bare_onnx(tmp), {"obs": np.zeros((1, 48), np.float32)})
        rows.append(("bare nn.Sequential, ONNX", bare_median, bare_p99))
        for name, core in (("MLP policy", []), ("GRU policy", [{"gru": 128}])):
            spec = policy_spec(core)
            model = compile_model(spec, OBS, ACT)
            model.preprocessor.update({"obs": torch.randn(1000, 48) * 3.0})
            bundle = tmp / name.replace(" ", "_")
            export_bundle(model, spec, bundle)
            report = check_bundle(bundle, latency_runs=RUNS)
            for fmt, r in report.items():
                rows.append((f"{name}, {fmt}", r["latency_median_ms"], r["latency_p99_ms"]))
    print(
        f"\nBatch-1 latency, one thread, {platform.machine()}, torch {torch.__version__}, "
        f"onnxruntime {ort.__version__}, {date.today()}"
    )
    for name, median, p99 in rows:
        print(
            f"  {name:28} median {median * 1e3:8.1f} us   p99 {p99 * 1e3:8.1f} us   "
            f"x{median / bare_median:.2f} of bare ONNX"
        )
    mlp_onnx = next(m for n, m, _ in rows if n == "MLP policy, onnx")
    print(f"MLP bundle ONNX / bare ONNX: {mlp_onnx / bare_median:.3f} (target <= 1.15)")
    with (Path(__file__).resolve().parent / "results.jsonl").open("a") as f:
        f.write(
            json.dumps(
                {
                    "benchmark": "export_latency",
                    "date": date.today().isoformat(),
                    "torch": torch.__version__,
                    "onnxruntime": ort.__version__,
                    "rows": rows,
                }
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
