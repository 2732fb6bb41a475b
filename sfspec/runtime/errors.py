"""Why training stopped: errors the command line reports in one line (exit status 1)."""

from __future__ import annotations


class TrainingError(Exception):
    """Training stopped on a fault (an environment error, non-finite data); the last checkpoint is kept."""
