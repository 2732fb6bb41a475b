"""``sfspec check``: verify a bundle's files, replay its golden inputs, measure batch-1 latency."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from sfspec.export.artifact import Artifact, open_artifact
from sfspec.export.errors import BundleError
from sfspec.export.formats import EXPORT_FORMATS
from sfspec.export.integrity import GOLDEN, load_golden, read_manifest, verify_all
from sfspec.export.parity import CHECK_FACTOR, judge
from sfspec.export.screen import screen_artifact


def check_bundle(bundle: str | Path, latency_runs: int = 200, trust: bool = False) -> dict[str, dict[str, Any]]:
    """Per artifact: worst error, mismatches, near-ties and latency on the golden data; or why it was skipped.

    Every file's size and SHA-256 are verified first (BundleError on any difference). TorchScript
    and torch.export files are programs: they are loaded and run only with ``trust=True``.
    """
    bundle = Path(bundle)
    meta = read_manifest(bundle)
    blobs = verify_all(bundle, meta)
    golden = load_golden(blobs[GOLDEN], meta)
    runs_code = EXPORT_FORMATS.runs_code()  # the formats that are programs: run only with trust
    report: dict[str, dict[str, Any]] = {}
    for fmt, name in meta["files"].items():
        if fmt in runs_code and not trust:
            screen_artifact(fmt, blobs[name], meta, name)  # a hostile file is refused even when not run
            report[fmt] = {"skipped": f"{name} not run: {runs_code[fmt]}; --trust runs it"}
            continue
        artifact = open_artifact(bundle, meta, fmt, threads=1, data=blobs[name])  # one thread: latency
        report[fmt] = {**_replay(artifact, golden, meta), **_latency(artifact, golden, meta, latency_runs)}
    if all("skipped" in r for r in report.values()):
        listed = ", ".join(meta["files"].values())
        raise BundleError(
            f"{bundle}: nothing checked: the bundle holds only {listed}, which run code from the bundle; "
            "pass --trust if you trust its author"
        )
    return report


def _golden_case(golden: dict, meta: dict, prefix: str, step: int | None) -> tuple[list, list, list, list]:
    """(inputs, expected outputs, allowances, near-tie masks) of the golden batch or one rollout step."""

    def pick(key: str):
        return golden[key] if step is None else golden[key][step]

    outputs = meta["outputs"]
    inputs = [pick(f"{prefix}/in/{n}") for n in meta["inputs"]]
    expected = [pick(f"{prefix}/out/{n}") for n in outputs]
    allowance = [CHECK_FACTOR * float(golden.get(f"{prefix}/noise/{n}", 0.0)) for n in outputs]
    ties = [pick(f"{prefix}/tie/{n}") if f"{prefix}/tie/{n}" in golden else None for n in outputs]
    return inputs, expected, allowance, ties


def _replay(artifact: Artifact, golden: dict, meta: dict) -> dict[str, Any]:
    cases = [("batch", None, "golden batch")]
    if meta["state"]:
        steps = golden[f"rollout/in/{meta['inputs'][0]}"].shape[0]
        cases += [("rollout", t, f"rollout step {t}") for t in range(steps)]
    worst, problems, near = 0.0, [], []
    for prefix, step, label in cases:
        inputs, expected, allowance, ties = _golden_case(golden, meta, prefix, step)
        bad = [n for n, e in zip(meta["outputs"], expected) if e.dtype.kind == "f" and not np.isfinite(e).all()]
        if bad:
            problems.append(f"{label}: the golden outputs of {bad[0]} are not finite (NaN or inf)")
            continue
        try:
            got = artifact(inputs)
        except Exception as exc:
            problems.append(f"{label}: {artifact.kind} failed on the golden inputs ({type(exc).__name__})")
            continue
        verdict = judge(meta["outputs"], got, expected, expected, allowance, ties)
        worst = max(worst, verdict.worst)
        problems += [f"{label}: {p}" for p in verdict.problems]
        near += [f"{label}: {p}" for p in verdict.near_ties]
    result: dict[str, Any] = {"worst_abs_error": worst, "mismatches": len(problems), "near_ties": len(near)}
    if problems:
        result["first_mismatch"] = problems[0]
    if near:
        result["first_near_tie"] = near[0]
    return result


def _latency(artifact: Artifact, golden: dict, meta: dict, runs: int) -> dict[str, float | None]:
    """Median and p99 wall time of one call at batch 1 (or the bundle's fixed batch)."""
    rows = 1 if meta["batch"] == "dynamic" else int(meta["batch"])
    one = [golden[f"batch/in/{n}"][:rows] for n in meta["inputs"]]
    try:
        for _ in range(10):
            artifact(one)
        times = []
        for _ in range(max(1, runs)):
            start = time.perf_counter()
            artifact(one)
            times.append(time.perf_counter() - start)
    except Exception:
        return {"latency_median_ms": None, "latency_p99_ms": None}  # the failure is among the mismatches
    return {"latency_median_ms": float(np.median(times) * 1e3), "latency_p99_ms": float(np.percentile(times, 99) * 1e3)}
