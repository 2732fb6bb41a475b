"""``sfspec plot``: learning curves (return against steps) of one or more runs on one figure."""

from __future__ import annotations

from pathlib import Path

from sfspec.io import atomic_write
from sfspec.runtime.rundir import METRICS_NAME, parse_metrics


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The metrics a run logged, one dict per log interval."""
    path = Path(run_dir) / METRICS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no metrics.jsonl (is this a run directory?)")
    try:
        return parse_metrics(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:  # damage before the last line: not a crash's torn write
        raise ValueError(f"{path}: {exc}") from None


def plot_runs(run_dirs: list[str | Path], out: str | Path, metric: str = "return_mean") -> Path:
    """Write a PNG with ``metric`` against environment steps for every run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    for run in run_dirs:
        rows = [r for r in read_metrics(run) if r.get(metric) is not None]
        ax.plot([r["step"] for r in rows], [r[metric] for r in rows], label=Path(run).name)
    ax.set_xlabel("environment steps")
    ax.set_ylabel(metric.replace("_", " "))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(out)
    atomic_write(out, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)
    return out
