"""``sfspec export``: write a policy bundle and refuse it unless every artifact agrees with the model.

A bundle directory holds one file per chosen format (``policy.onnx``, ``policy.pt``,
``policy.pt2``: see ``sfspec.export.formats``), ``policy.json`` (the observation and action layout,
state names, versions, and the size and SHA-256 of every file) and ``golden_io.npz`` (inputs and
the outputs every artifact must reproduce, including a recurrent rollout with a reset in the
middle; ``golden_io.pt`` holds the same for C++). This module only sequences the steps; each has
its own module: writers (files), parity (the gate), manifest (policy.json), staging (atomic swap).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sfspec.compiler.model import ActorCritic
from sfspec.export.artifact import Artifact
from sfspec.export.check import check_bundle
from sfspec.export.config import ExportConfig
from sfspec.export.errors import BundleError, ExportError
from sfspec.export.formats import EXPORT_FORMATS, GOLDEN, GOLDEN_PT, MANIFEST
from sfspec.export.manifest import complete_manifest, manifest_fields, weights_sha256
from sfspec.export.parity import parity_gate
from sfspec.export.policy import DeployPolicy
from sfspec.export.quiet import known_harmless_warnings
from sfspec.export.samples import example_inputs
from sfspec.export.staging import staged_bundle
from sfspec.export.writers import write_artifacts, write_bytes, write_golden

__all__ = [
    "Artifact",
    "BundleError",
    "ExportConfig",
    "ExportError",
    "ExportReport",
    "check_bundle",
    "export_bundle",
    "weights_sha256",
]


@dataclass
class ExportReport:
    """What was written and how closely each artifact matched."""

    out_dir: Path
    files: list[str]
    worst: dict[str, float] = field(default_factory=dict)  # artifact -> worst absolute error against eager
    near_ties: dict[str, list[str]] = field(default_factory=dict)  # artifact -> discrete near-ties (not failures)
    reference: str = ""  # what the artifacts were measured against


def export_bundle(
    model: ActorCritic,
    spec: dict,
    out_dir: str | Path,
    formats: Sequence[str] | None = None,
    config: ExportConfig | None = None,
    **overrides: Any,
) -> ExportReport:
    """Write the bundle and run the parity gate; raise ExportError (old bundle untouched) if anything fails.

    ``config`` defaults to the schema's defaults (``ExportConfig.from_spec(spec)`` reads the spec's
    ``export:`` section, as the CLI does); ``formats`` and keyword ``overrides`` (``opset``,
    ``batch``, ``with_value``, ``legacy_onnx``) replace its fields.
    """
    config = (config or ExportConfig.from_spec()).override(formats=formats, **overrides)
    policy = DeployPolicy(model.cpu().eval(), config.with_value).eval()
    out_dir = Path(out_dir)
    with staged_bundle(out_dir) as staging:
        report = _build(policy, spec, staging, config)
    report.out_dir = out_dir
    return report


def _build(policy: DeployPolicy, spec: dict, staging: Path, config: ExportConfig) -> ExportReport:
    """Every file of the bundle in ``staging``, the parity gate passed; policy.json last."""
    fixed = None if config.batch == "dynamic" else int(config.batch)
    example = example_inputs(policy, fixed or 2)
    fields = manifest_fields(policy, spec, example, config)
    files = [EXPORT_FORMATS.get(fmt).file for fmt in config.formats]
    with known_harmless_warnings():
        blobs = write_artifacts(policy, example, config, fields, staging)
        artifacts = [
            Artifact(fmt, staging / name, policy.input_names, blobs[name]) for fmt, name in zip(config.formats, files)
        ]
    result, golden = parity_gate(policy, artifacts, example, fixed)
    blobs.update(write_golden(policy, golden, staging))
    manifest = complete_manifest(fields, config.formats, blobs, result)
    write_bytes(staging / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    files += [GOLDEN, GOLDEN_PT, MANIFEST]
    return ExportReport(staging, files, result.worst, result.near_ties, result.reference)
