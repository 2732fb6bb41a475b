"""Before and after a change, in the same run: training throughput and the CartPole run's wall time.

    python benchmarks/before_after.py BEFORE_COMMIT [--after HEAD] [--rounds 5]

Checks both commits out into temporary git worktrees and alternates them, round by round:
- throughput: ``benchmarks/throughput.py --no-gym --no-sb3 --no-solve`` of each tree (end-to-end
  PPO steps/s on sfspec/CartPole-v1 at 512 and 4,096 envs, 16-step rollout, 4x4 minibatches);
- the CartPole comparison's sfspec side: ``sfspec train specs/cartpole_fast.yaml`` as a whole
  process (imports included), wall time.
Each tree runs its own code (PYTHONPATH points at it). Prints medians and after/before ratios.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROW = re.compile(r"sfspec/CartPole-v1, (\d+) envs, \S+\s+([\d,]+) steps/s")


def worktree(commit: str, where: Path) -> Path:
    """A detached checkout of ``commit`` at ``where``."""
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), commit], check=True)
    return where


def run_in(tree: Path, args: list[str], cwd: Path) -> tuple[str, float]:
    """Run ``python ARGS`` with ``tree``'s sfspec; its output and wall time."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    start = time.perf_counter()
    out = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, check=True)
    return out.stdout, time.perf_counter() - start


def throughput(tree: Path, updates: int) -> dict[int, float]:
    """Steps/s per env count, from the tree's own throughput script."""
    script = ["benchmarks/throughput.py", "--no-gym", "--no-sb3", "--no-solve", "--updates", str(updates)]
    out, _ = run_in(tree, script, tree)
    return {int(n): float(v.replace(",", "")) for n, v in ROW.findall(out)}


def cartpole_wall(tree: Path, scratch: Path) -> float:
    """Wall seconds of ``sfspec train specs/cartpole_fast.yaml``, start-up included."""
    run_dir = scratch / f"run-{time.monotonic_ns()}"
    command = ["-m", "sfspec", "train", "specs/cartpole_fast.yaml", "--run-dir", str(run_dir), "-q"]
    return run_in(tree, command, tree)[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before")
    parser.add_argument("--after", default="HEAD")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--updates", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        commits = {"before": args.before, "after": args.after}
        trees = {name: worktree(commit, Path(tmp) / name) for name, commit in commits.items()}
        sps: dict[str, dict[int, list[float]]] = {name: {} for name in trees}
        wall: dict[str, list[float]] = {name: [] for name in trees}
        try:
            for i in range(args.rounds):
                order = list(trees) if i % 2 == 0 else list(reversed(trees))  # alternate who goes first
                for name in order:
                    for n, v in throughput(trees[name], args.updates).items():
                        sps[name].setdefault(n, []).append(v)
                    wall[name].append(cartpole_wall(trees[name], Path(tmp)))
                print(f"round {i + 1}/{args.rounds} done", file=sys.stderr)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    print(f"before {args.before}, after {args.after}: medians of {args.rounds} alternating rounds")
    for n in sorted(sps["before"]):
        b, a = statistics.median(sps["before"][n]), statistics.median(sps["after"][n])
        print(f"  throughput, sfspec/CartPole-v1, {n:>5} envs: {b:>10,.0f} -> {a:>10,.0f} steps/s  x{a / b:.3f}")
    b, a = statistics.median(wall["before"]), statistics.median(wall["after"])
    print(f"  sfspec train specs/cartpole_fast.yaml, whole process: {b:.2f} s -> {a:.2f} s  x{a / b:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
