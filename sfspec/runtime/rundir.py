"""A run directory: one process at a time, never silently reused, its metrics cut back on resume."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sfspec.io import atomic_write_text

LOCK_NAME = ".lock"
METRICS_NAME = "metrics.jsonl"
RUN_FILES = ("spec.yaml", METRICS_NAME, "checkpoint.pt")  # any of these means a run lives here


class RunDirError(Exception):
    """The run directory cannot be used as asked (in use, already holds a run, not writable)."""


@contextmanager
def locked_run_dir(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` for the life of a run; refuse if another process holds it.

    An flock dies with its process, so a killed run never leaves a stale lock behind.
    """
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise RunDirError(f"cannot use {run_dir} as a run directory: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise RunDirError(
                f"{run_dir} is in use by another sfspec process (pid {holder}); wait for it or give another --run-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def refuse_existing_run(run_dir: Path, spec_path: str | None = None) -> None:
    """A fresh run never writes into a directory that already holds one (or the user's own spec.yaml)."""
    if spec_path is not None and (run_dir / "spec.yaml").resolve() == Path(spec_path).resolve():
        raise RunDirError(
            f"--run-dir {run_dir} holds the spec you are training ({Path(spec_path).name}); a run writes its "
            "resolved spec.yaml there and would overwrite yours: give another --run-dir"
        )
    found = [name for name in RUN_FILES if (run_dir / name).exists()]
    if found:
        raise RunDirError(
            f"{run_dir} already holds a run ({', '.join(found)}): continue it with --resume {run_dir}, "
            "or give another --run-dir"
        )


def parse_metrics(text: str) -> list[dict]:
    """Metrics lines as dicts; a torn last line (a crash or a full disk mid-write) is skipped.

    Raises ValueError naming the line when an earlier line is damaged or is not a metrics record.
    """
    rows = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if i == len(lines) - 1 and not text.endswith("\n"):
                break  # only the last, unterminated line can be torn; anything else is real damage
            raise ValueError(f"line {i + 1} is not JSON ({exc.msg})") from None
        if not isinstance(row, dict) or type(row.get("step")) is not int:
            raise ValueError(f"line {i + 1} is not a metrics record (a mapping with an integer 'step')")
        rows.append(row)
    return rows


def truncate_metrics(run_dir: Path, last_step: int) -> None:
    """Keep only the metrics logged up to ``last_step`` (the checkpoint's): a resume logs the rest again."""
    path = run_dir / METRICS_NAME
    if not path.is_file():
        return
    try:
        rows = parse_metrics(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{path}: {exc}; repair or remove that line, then resume") from None
    kept = [row for row in rows if row["step"] <= last_step]
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in kept))


LAUNCH_NAME = ".torchrun"  # the torchrun job (TORCHELASTIC_RUN_ID) that last trained in this directory


def mark_launch(run_dir: Path, run_id: str) -> None:
    """Record which torchrun job trains here, so its restarts find this directory again."""
    atomic_write_text(run_dir / LAUNCH_NAME, run_id + "\n")


def _launch_of(run_dir: Path) -> str | None:
    try:  # a job id is short: never read more of a file someone else may have put there
        with open(run_dir / LAUNCH_NAME, "rb") as marker:
            return marker.read(256).decode("utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None


def find_launched_run(run_dir: Path, run_id: str) -> Path | None:
    """The directory an earlier attempt of torchrun job ``run_id`` trained in: ``run_dir`` itself, else a sibling.

    A restart runs the same command line again; without ``--run-dir`` its default directory has a new
    time in its name, so the first attempt's directory is found by the job id it recorded.
    """
    if not run_id:
        return None
    if _launch_of(run_dir) == run_id:
        return run_dir
    try:
        siblings = [d for d in run_dir.parent.iterdir() if d.is_dir() and _launch_of(d) == run_id]
    except OSError:
        return None
    return max(siblings, key=lambda d: (d / LAUNCH_NAME).stat().st_mtime, default=None)
