"""Start-up of the command line, whole processes: wall and CPU time, medians of alternating runs.

    python benchmarks/startup.py                          # validate, import torch, train start-up
    python benchmarks/startup.py --vs-sb3 --repeats 3     # cartpole_fast's whole train against SB3's
    python benchmarks/startup.py --importtime validate specs/cartpole.yaml   # where an import's time goes

Each command runs as a fresh process, as a user runs it (``python -m sfspec ...`` from the
repository root), the contenders alternating so a busy neighbour slows them alike; CPU time (user +
system of the child) is printed beside the wall time because it moves less when the cores are shared.
``--vs-sb3`` runs ``sfspec train specs/cartpole_fast.yaml`` against a process that trains SB3's PPO
with rl-zoo's CartPole-v1 settings on the same 100,000-step budget (benchmarks/sb3_cartpole.py
--zoo-process; needs stable-baselines3) and prints the ratio (target <= 0.25).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def sfspec(*args: str) -> list[str]:
    return [PY, "-m", "sfspec", *args]


def startup_commands(tmp: Path) -> dict[str, list[str]]:
    """The start-up contenders: an empty interpreter, validate, torch alone, one-update train."""
    return {
        "python -c pass": [PY, "-c", "pass"],
        "sfspec --version": sfspec("--version"),
        "sfspec validate specs/cartpole_fast.yaml": sfspec("validate", "specs/cartpole_fast.yaml"),
        "sfspec validate specs/cartpole.yaml": sfspec("validate", "specs/cartpole.yaml"),
        "python -c 'import torch'": [PY, "-c", "import torch"],
        "sfspec train cartpole_fast, 1 update": sfspec(
            "train", "specs/cartpole_fast.yaml", "--set", "train.steps=512", "--run-dir", "{run}", "--quiet"
        ),
    }


def sb3_commands(tmp: Path) -> dict[str, list[str]]:
    """cartpole_fast's whole train and SB3's rl-zoo CartPole, 100,000 steps each."""
    return {
        "sfspec train specs/cartpole_fast.yaml": sfspec(
            "train", "specs/cartpole_fast.yaml", "--run-dir", "{run}", "--quiet"
        ),
        "SB3 PPO, rl-zoo CartPole-v1": [PY, str(ROOT / "benchmarks" / "sb3_cartpole.py"), "--zoo-process", "{run}"],
    }


def timed(command: list[str], tmp: Path, index: int) -> tuple[float, float]:
    """(wall, CPU) seconds of one run of ``command`` as a child process."""
    run = tmp / f"run{index}"
    command = [part.replace("{run}", str(run)) for part in command]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def measure(commands: dict[str, list[str]], repeats: int, warmup: int = 1) -> dict[str, list[tuple[float, float]]]:
    """Every command ``repeats`` times, alternating, after ``warmup`` untimed rounds (the file cache)."""
    times: dict[str, list[tuple[float, float]]] = defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(warmup + repeats):
            for i, (name, command) in enumerate(commands.items()):
                result = timed(command, Path(tmp), round_ * 100 + i)
                if round_ >= warmup:
                    times[name].append(result)
                print(f"{name}: {result[0]:.2f} s wall, {result[1]:.2f} s CPU", file=sys.stderr, flush=True)
    return times


def table(times: dict[str, list[tuple[float, float]]]) -> str:
    """Markdown: medians (and min) of wall and CPU seconds per command."""
    lines = ["| command | wall s, median (min) | CPU s, median |", "|---|---|---|"]
    for name, runs in times.items():
        walls, cpus = [w for w, _ in runs], [c for _, c in runs]
        lines.append(
            f"| `{name}` | {statistics.median(walls):.2f} ({min(walls):.2f}) | {statistics.median(cpus):.2f} |"
        )
    return "\n".join(lines)


def importtime(args: list[str], top: int) -> str:
    """``python -X importtime -m sfspec ARGS``: the modules with the largest cumulative import time."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [part.replace("{run}", str(Path(tmp) / "run")) for part in args]
        proc = subprocess.run(
            [PY, "-X", "importtime", "-m", "sfspec", *command], cwd=ROOT, capture_output=True, text=True
        )
    rows = []
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line and "cumulative" not in line:
            own, cumulative, name = line.replace("import time:", "").split("|", 2)
            rows.append((int(cumulative), int(own), name.strip()))
    rows.sort(reverse=True)
    out = ["| module | cumulative ms | self ms |", "|---|---|---|"]
    out += [f"| `{name}` | {cum / 1000:.0f} | {own / 1000:.0f} |" for cum, own, name in rows[:top]]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--vs-sb3", action="store_true", help="cartpole_fast's whole train against SB3's")
    parser.add_argument("--importtime", nargs=argparse.REMAINDER, help="sfspec ARGS to profile with -X importtime")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    args = parser.parse_args()
    if args.importtime:
        print(importtime(args.importtime, args.top))
        return 0
    print(f"{os.cpu_count()} CPUs (affinity {len(os.sched_getaffinity(0))}), load {os.getloadavg()[0]:.1f} at start")
    times = measure((sb3_commands if args.vs_sb3 else startup_commands)(Path()), args.repeats, args.warmup)
    print(table(times))
    if args.vs_sb3:
        ours, theirs = (statistics.median(w for w, _ in runs) for runs in times.values())
        print(f"\nsfspec / SB3 whole-process wall time: {ours / theirs:.3f} (target <= 0.25)")
    print(f"load {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
