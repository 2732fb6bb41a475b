"""CPU threads: each workload at 1 and 2 torch threads (and what ``train.threads: auto`` picks), quiet and shared.

    python benchmarks/threads.py                        # every workload, quiet then shared, 3 repeats
    python benchmarks/threads.py --only lstm adam --repeats 5 --modes shared

Each run is a fresh process (``python -m sfspec train ... --set train.threads=N``, or a micro-benchmark
under ``torch.set_num_threads(N)``), the thread counts alternating. "shared" starts one busy process
(``python -c 'while 1: pass'``) beside the runs, as a neighbour on the same cores; "quiet" runs alone
(on a machine nobody else uses, for a quiet figure). Prints a markdown table of median wall seconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

LSTM_SPEC = {  # issue 12: 677 s with two threads, 32 s with one
    "env": {"id": "sfspec/CartPole-v1", "num_envs": 4},
    "model": {"encoder": [{"linear": 32}, "tanh"], "core": [{"lstm": {"hidden": 32, "layers": 2}}]},
    "train": {"steps": 4096, "rollout": 128, "epochs": 4, "minibatches": 4, "lr": 3e-4, "lr_schedule": "constant"},
}
WIDE_SPEC = {"env": {"id": "sfspec/CartPole-v1", "num_envs": 4096}, "model": {"encoder": [{"linear": 64}, "tanh"] * 2}}

MICRO = {
    "lstmcell": (
        "import torch,time; cell=torch.nn.LSTMCell(32,32); x=torch.randn(4,32); h=(torch.zeros(4,32),)*2\n"
        "with torch.no_grad():\n for _ in range(128): h=cell(x,h)\n"
        "t=time.perf_counter()\nwith torch.no_grad():\n for _ in range(128): h=cell(x,h)\n"
        "print(time.perf_counter()-t)"
    ),
    "adam": (
        "import torch,time; m=torch.nn.Sequential(torch.nn.Linear(4,64),torch.nn.Tanh(),torch.nn.Linear(64,64),"
        "torch.nn.Tanh(),torch.nn.Linear(64,3)); o=torch.optim.Adam(m.parameters(),fused=True)\n"
        "m(torch.randn(8,4)).sum().backward(); o.step()\n"
        "t=time.perf_counter()\nfor _ in range(200): o.step()\nprint((time.perf_counter()-t)/200)"
    ),
}


def workloads(tmp: Path) -> dict[str, list[str]]:
    """name -> command, with {threads} for the thread count."""
    lstm, wide = tmp / "lstm.yaml", tmp / "wide.yaml"
    lstm.write_text(yaml.safe_dump(LSTM_SPEC))
    wide.write_text(yaml.safe_dump(WIDE_SPEC))

    def train(spec: Path | str, *sets: str) -> list[str]:
        sets_args = [arg for s in sets for arg in ("--set", s)]
        return [PY, "-m", "sfspec", "train", str(spec), *sets_args, "--set", "train.threads={threads}", "--run-dir"]

    return {
        "readme": train("specs/cartpole.yaml", "train.steps=20000"),  # the README's run, 20k of its 100k steps
        "fast": train("specs/cartpole_fast.yaml"),
        "lstm": train(lstm),
        "wide": train(wide, f"train.steps={3 * 24 * 4096}"),
        "lstmcell": [PY, "-c", f"import torch; torch.set_num_threads({{threads}})\n{MICRO['lstmcell']}"],
        "adam": [PY, "-c", f"import torch; torch.set_num_threads({{threads}})\n{MICRO['adam']}"],
    }


DESCRIPTION = {
    "readme": "`sfspec train specs/cartpole.yaml`, 20,000 steps (gymnasium, 8 envs)",
    "fast": "`sfspec train specs/cartpole_fast.yaml` (100,352 steps, 32 tensor envs)",
    "lstm": "LSTM 2x32 core, CartPole, 4 envs, rollout 128, 4,096 steps",
    "wide": "64-64 MLP, 4,096 envs, defaults (rollout 24, 5x4), 3 updates",
    "lstmcell": "`nn.LSTMCell(32, 32)` loop, 128 steps at batch 4, forward (s)",
    "adam": "fused Adam step, 64-64 MLP (s per step)",
}


@contextmanager
def neighbour(shared: bool):
    """One busy process beside the measured ones while ``shared``."""
    proc = subprocess.Popen([PY, "-c", "while 1: pass"]) if shared else None
    try:
        yield
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()


def once(command: list[str], threads: int, run_dir: Path) -> float:
    """Seconds: the process's wall time, or what a micro-benchmark prints."""
    command = [part.replace("{threads}", str(threads)) for part in command]
    if command[-1] == "--run-dir":
        command += [str(run_dir), "--quiet"]
    start = time.perf_counter()
    out = subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    wall = time.perf_counter() - start
    return float(out.strip().splitlines()[-1]) if command[1] == "-c" else wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(DESCRIPTION), default=list(DESCRIPTION))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--modes", nargs="+", choices=["quiet", "shared"], default=["quiet", "shared"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs (affinity {len(os.sched_getaffinity(0))}), load {os.getloadavg()[0]:.1f}", flush=True)
    header = " | ".join(f"{mode}, {n} thread{'s' if n > 1 else ''}" for mode in args.modes for n in args.threads)
    lines = [f"| workload | {header} |", "|---" * (1 + len(args.modes) * len(args.threads)) + "|"]
    with tempfile.TemporaryDirectory() as tmp:
        commands = workloads(Path(tmp))
        for name in args.only:
            cells = []
            for mode in args.modes:
                times: dict[int, list[float]] = {n: [] for n in args.threads}
                with neighbour(mode == "shared"):
                    for r in range(args.repeats):
                        for n in args.threads:  # alternating
                            times[n].append(once(commands[name], n, Path(tmp) / f"{name}-{mode}-{n}-{r}"))
                cells += [_fmt(statistics.median(times[n])) for n in args.threads]
            lines.append(f"| {DESCRIPTION[name]} | {' | '.join(cells)} |")
            print(lines[-1], flush=True)
    print(f"load {os.getloadavg()[0]:.1f} at the end\n")
    print("\n".join(lines))
    return 0


def _fmt(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms" if seconds < 1 else f"{seconds:.1f} s"


if __name__ == "__main__":
    sys.exit(main())
