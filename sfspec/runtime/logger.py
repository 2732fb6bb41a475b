"""What a run reports: metrics.jsonl, TensorBoard events and a progress bar."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from sfspec.runtime.rundir import METRICS_NAME


class RunLogger:
    """Appends one JSON object per log interval, mirrors it to TensorBoard, drives the progress bar."""

    def __init__(self, run_dir: Path, total_steps: int, start_step: int, quiet: bool, title: str):
        self.metrics_path = run_dir / METRICS_NAME
        self.metrics_file = open(self.metrics_path, "a", encoding="utf-8")
        from torch.utils.tensorboard import SummaryWriter

        # On resume, TensorBoard drops the events a killed run logged after its checkpoint.
        self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=start_step + 1 if start_step else None)
        self.progress = None
        if not quiet:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[sps]} steps/s  return {task.fields[ret]}"),
                transient=False,
            )
            self.progress.start()
            self.task = self.progress.add_task(title, total=total_steps, completed=start_step, sps="-", ret="-")

    def log(self, metrics: dict[str, Any]) -> None:
        """Record one interval's metrics."""
        try:
            self.metrics_file.write(json.dumps(metrics) + "\n")
            self.metrics_file.flush()
        except OSError as exc:  # a full disk: name the file; the last checkpoint is intact
            raise OSError(exc.errno, f"cannot write metrics: {exc.strerror}", str(self.metrics_path)) from None
        step = metrics["step"]
        for key, value in metrics.items():
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(key, value, step)
        if self.progress is not None:
            ret = metrics.get("return_mean")
            self.progress.update(
                self.task, completed=step, sps=f"{metrics['sps']:,.0f}", ret="-" if ret is None else f"{ret:.1f}"
            )

    def close(self) -> None:
        """Flush and close everything."""
        if self.progress is not None:
            self.progress.stop()
        self.writer.close()
        self.metrics_file.close()


class NullLogger:
    """What ranks other than 0 log with: nothing (rank 0 alone writes the run's metrics and progress)."""

    def log(self, metrics: dict[str, Any]) -> None:
        """Record nothing."""

    def close(self) -> None:
        """Nothing to close."""
