"""Write a policy bundle (ONNX, TorchScript, torch.export) and refuse it unless every artifact agrees.

A bundle directory holds ``policy.onnx``, ``policy.pt``, ``policy.pt2``, ``policy.json`` (the
observation and action layout, state names, versions, hashes) and ``golden_io.npz`` (inputs and the
outputs every artifact must reproduce, including a recurrent rollout with a reset in the middle).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sfspec import __version__
from sfspec.compiler.model import ActorCritic
from sfspec.compiler.spaces import describe_space
from sfspec.export.policy import DeployPolicy
from sfspec.io import atomic_write, atomic_write_text

FORMATS = ("onnx", "torchscript", "pt2")
FILES = {"onnx": "policy.onnx", "torchscript": "policy.pt", "pt2": "policy.pt2"}
ATOL, RTOL = 1e-5, 1e-4


class ExportError(Exception):
    """An artifact could not be written, or does not match the eager model."""


@dataclass
class ExportReport:
    """What was written and how closely each artifact matched."""

    out_dir: Path
    files: list[str]
    worst: dict[str, float] = field(default_factory=dict)  # artifact -> worst absolute error


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def weights_sha256(model: ActorCritic) -> str:
    """A hash of every parameter and buffer (names, shapes and values)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------- inputs


def _obs_sample(policy: DeployPolicy, batch: int, generator: torch.Generator, spread: float = 1.0) -> list:
    """Raw observations around the normaliser's statistics (or within the space for other kinds)."""
    out = []
    for key in policy.obs_keys:
        info = policy.model.inputs[key]
        space = info.space
        shape = (batch, *space.shape)
        if info.kind in ("discrete", "multi_discrete"):
            high = torch.tensor(info.categories).reshape(space.shape)
            low = torch.tensor(info.offset).reshape(high.shape)
            values = low + (torch.rand(shape, generator=generator) * high).floor()
            out.append(values.to(torch.int64))
        elif info.kind == "multi_binary":
            out.append((torch.rand(shape, generator=generator) < 0.5).to(torch.int8))
        elif space.dtype == np.uint8:
            out.append(torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8))
        else:
            rms = policy.model.preprocessor.normalizer(key)
            mean = rms.mean.reshape(space.shape) if rms is not None else torch.zeros(space.shape)
            std = rms.var.sqrt().reshape(space.shape) if rms is not None else torch.ones(space.shape)
            low, high = _finite_bounds(space)
            x = mean + std * spread * torch.randn(shape, generator=generator)
            out.append(torch.minimum(torch.maximum(x, low), high).to(torch.float32))
    return out


def _finite_bounds(space) -> tuple[torch.Tensor, torch.Tensor]:
    low = torch.as_tensor(np.nan_to_num(np.asarray(space.low, dtype=np.float64), neginf=-1e6), dtype=torch.float32)
    high = torch.as_tensor(np.nan_to_num(np.asarray(space.high, dtype=np.float64), posinf=1e6), dtype=torch.float32)
    return low, high


def _edge_cases(policy: DeployPolicy) -> list[list]:
    """Zeros, the bounds, and large values for continuous inputs (batch of 1 each)."""
    cases = []
    for which in ("zeros", "low", "high", "large"):
        row = []
        for key in policy.obs_keys:
            info = policy.model.inputs[key]
            space = info.space
            if info.kind in ("discrete", "multi_discrete", "multi_binary") or space.dtype == np.uint8:
                value = torch.zeros((1, *space.shape), dtype=_dtype_for(policy, key))
                if which == "high" and space.dtype == np.uint8:
                    value = torch.full((1, *space.shape), 255, dtype=torch.uint8)
                if info.kind in ("discrete", "multi_discrete"):
                    value = value + torch.tensor(info.offset).reshape(value.shape[1:]).to(value.dtype)
                row.append(value)
                continue
            low, high = _finite_bounds(space)
            value = {
                "zeros": torch.zeros(space.shape),
                "low": low,
                "high": high,
                "large": torch.full(space.shape, 1e4),
            }[which]
            row.append(value.unsqueeze(0).to(torch.float32))
        cases.append(row)
    return cases


def _dtype_for(policy: DeployPolicy, key: str) -> torch.dtype:
    info = policy.model.inputs[key]
    if info.kind in ("discrete", "multi_discrete"):
        return torch.int64
    if info.kind == "multi_binary":
        return torch.int8
    return torch.uint8 if info.space.dtype == np.uint8 else torch.float32


def _state_inputs(policy: DeployPolicy, batch: int, reset: torch.Tensor | None = None) -> list:
    if not policy.slots:
        return []
    states = [torch.zeros(batch, s.layers, s.hidden) for s in policy.slots]
    return states + [reset if reset is not None else torch.ones(batch, dtype=torch.float32)]


def example_inputs(policy: DeployPolicy, batch: int = 2) -> tuple:
    """Inputs for tracing and exporting."""
    gen = torch.Generator().manual_seed(0)
    return tuple(_obs_sample(policy, batch, gen) + _state_inputs(policy, batch))


# ---------------------------------------------------------------- writing artifacts


def _write_torchscript(policy: DeployPolicy, example: tuple, path: Path) -> None:
    with torch.no_grad():
        scripted = torch.jit.trace(policy, example, check_trace=False, strict=False)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def _dynamic_shapes(policy: DeployPolicy, example: tuple, batch: str | int) -> tuple | None:
    if batch != "dynamic":
        return None
    dim = torch.export.Dim("batch", min=1, max=1 << 20)
    return (tuple({0: dim} for _ in example),)  # one entry: forward's *inputs


def _exported_program(policy: DeployPolicy, example: tuple, batch: str | int):
    with torch.no_grad():
        return torch.export.export(
            policy, example, dynamic_shapes=_dynamic_shapes(policy, example, batch), strict=False
        )


def _write_pt2(policy: DeployPolicy, example: tuple, batch: str | int, path: Path) -> None:
    program = _exported_program(policy, example, batch)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def _write_onnx(
    policy: DeployPolicy, example: tuple, batch: str | int, opset: int, legacy: bool, metadata: dict, path: Path
) -> None:
    import onnx

    tmp = path.with_suffix(".onnx.partial")
    kwargs: dict[str, Any] = {
        "input_names": policy.input_names,
        "output_names": policy.output_names,
        "opset_version": opset,
    }
    with torch.no_grad():
        if legacy:
            axes = {n: {0: "batch"} for n in policy.input_names + policy.output_names} if batch == "dynamic" else None
            torch.onnx.export(policy, example, str(tmp), dynamo=False, dynamic_axes=axes, **kwargs)
        else:
            program = _exported_program(policy, example, batch)
            onnx_program = torch.onnx.export(program, example, dynamo=True, verbose=False, **kwargs)
            onnx_program.save(str(tmp))
    model = onnx.load(str(tmp))
    tmp.unlink()
    onnx.checker.check_model(model)
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    data = model.SerializeToString()
    atomic_write(path, lambda f: f.write(data))


# ---------------------------------------------------------------- running artifacts


class Artifact:
    """One exported policy file, run on numpy inputs."""

    def __init__(self, kind: str, path: Path, input_names: list[str]):
        self.kind, self.path, self.input_names = kind, path, input_names
        if kind == "onnx":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            self.feed_order = [input_names.index(i.name) for i in self.session.get_inputs()]
        elif kind == "torchscript":
            self.module = torch.jit.load(str(path))
        else:
            self.module = torch.export.load(str(path)).module()

    def __call__(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        if self.kind == "onnx":
            return self.session.run(None, {self.input_names[i]: inputs[i] for i in self.feed_order})
        with torch.no_grad():
            out = self.module(*[torch.from_numpy(np.ascontiguousarray(x)) for x in inputs])
        out = out if isinstance(out, (tuple, list)) else (out,)
        return [o.numpy() for o in out]


def _eager(policy: DeployPolicy, inputs: list[np.ndarray]) -> list[np.ndarray]:
    with torch.no_grad():
        return [o.numpy() for o in policy(*[torch.from_numpy(np.ascontiguousarray(x)) for x in inputs])]


def compare(expected: list[np.ndarray], got: list[np.ndarray], names: list[str]) -> tuple[float, list[str]]:
    """Worst absolute error, and the outputs that break the tolerances (integers must match exactly)."""
    worst, bad = 0.0, []
    for name, e, g in zip(names, expected, got):
        g = np.asarray(g)
        if e.shape != g.shape:
            bad.append(f"{name}: shape {g.shape}, expected {e.shape}")
            continue
        if np.issubdtype(e.dtype, np.integer):
            mismatches = int((e != g).sum())
            if mismatches:
                bad.append(f"{name}: {mismatches} of {e.size} discrete values differ")
            continue
        err = np.abs(e.astype(np.float64) - g.astype(np.float64))
        worst = max(worst, float(err.max()) if err.size else 0.0)
        over = err > ATOL + RTOL * np.abs(e.astype(np.float64))
        if over.any():
            bad.append(f"{name}: {int(over.sum())} values off, worst {float(err.max()):.3g}")
    return worst, bad


# ---------------------------------------------------------------- golden data and the parity gate


def _rebatch(batches: list[list[torch.Tensor]], size: int | None) -> list[list[torch.Tensor]]:
    """For a fixed-batch bundle: split larger batches into chunks of ``size``, tile smaller ones."""
    if size is None:
        return batches
    out = []
    for batch in batches:
        rows = batch[0].shape[0]
        if rows < size:
            out.append([t.repeat_interleave(size // rows + 1, dim=0)[:size] for t in batch])
        else:
            out += [[t[i : i + size] for t in batch] for i in range(0, rows - size + 1, size)]
    return out


def parity_cases(
    policy: DeployPolicy, samples: int = 1000, seed: int = 0, fixed_batch: int | None = None
) -> list[list[np.ndarray]]:
    """Batches to compare on: samples around the normaliser's statistics, then edge cases."""
    gen = torch.Generator().manual_seed(seed)
    batches = [_obs_sample(policy, samples, gen) + _state_inputs(policy, samples, _random_resets(samples, gen))]
    batches.append(_obs_sample(policy, 256, gen, spread=4.0) + _state_inputs(policy, 256))
    for case in _edge_cases(policy):
        batches.append(case + _state_inputs(policy, 1))
    if policy.slots:  # random non-zero states too
        obs = _obs_sample(policy, 64, gen)
        states = [torch.randn(64, s.layers, s.hidden, generator=gen) * 0.5 for s in policy.slots]
        batches.append(obs + states + [torch.zeros(64)])
    return [[t.numpy() for t in batch] for batch in _rebatch(batches, fixed_batch)]


def _random_resets(batch: int, gen: torch.Generator) -> torch.Tensor:
    return (torch.rand(batch, generator=gen) < 0.5).to(torch.float32)


def recurrent_rollout(policy: DeployPolicy, steps: int = 50, batch: int = 4, seed: int = 1) -> list[list[np.ndarray]]:
    """Per step inputs of a rollout fed back from the eager model's states, reset at the middle."""
    gen = torch.Generator().manual_seed(seed)
    n_obs, n_states = len(policy.obs_keys), len(policy.slots)
    states = [torch.zeros(batch, s.layers, s.hidden) for s in policy.slots]
    rows = []
    for t in range(steps):
        reset = torch.ones(batch) if t in (0, steps // 2) else torch.zeros(batch)
        inputs = _obs_sample(policy, batch, gen) + states + [reset]
        rows.append([x.numpy() for x in inputs])
        with torch.no_grad():
            out = policy(*inputs)
        n_actions = len(out) - n_states - (1 if policy.with_value else 0)
        states = list(out[n_actions : n_actions + n_states])
    assert len(rows[0]) == n_obs + n_states + 1
    return rows


def check_parity(policy: DeployPolicy, artifacts: list[Artifact], fixed_batch: int | None = None) -> dict[str, float]:
    """Every artifact against eager PyTorch on the parity cases and a recurrent rollout; raise on mismatch."""
    names = policy.output_names
    cases = parity_cases(policy, fixed_batch=fixed_batch)
    rollout = recurrent_rollout(policy, batch=fixed_batch or 4) if policy.slots else []
    worst: dict[str, float] = {}
    problems = []
    for artifact in artifacts:
        worst[artifact.kind] = 0.0
        for i, inputs in enumerate(cases + rollout):
            label = f"case {i}" if i < len(cases) else f"rollout step {i - len(cases)}"
            err, bad = compare(_eager(policy, inputs), artifact(inputs), names)
            worst[artifact.kind] = max(worst[artifact.kind], err)
            problems += [f"{artifact.path.name}, {label}: {b}" for b in bad]
        if rollout:  # also feed the artifact its own states back, as a controller would
            problems += _closed_loop(policy, artifact, rollout)
    if problems:
        shown = "\n  ".join(problems[:10])
        raise ExportError(f"parity check failed ({len(problems)} mismatches):\n  {shown}")
    return worst


def _closed_loop(policy: DeployPolicy, artifact: Artifact, rollout: list[list[np.ndarray]]) -> list[str]:
    n_obs, n_states = len(policy.obs_keys), len(policy.slots)
    n_actions = len(policy.output_names) - n_states - (1 if policy.with_value else 0)
    eager_states = artifact_states = list(rollout[0][n_obs : n_obs + n_states])
    problems = []
    for t, row in enumerate(rollout):
        obs, reset = row[:n_obs], row[-1:]
        expected = _eager(policy, obs + eager_states + reset)
        got = artifact(obs + artifact_states + reset)
        _, bad = compare(expected, got, policy.output_names)
        problems += [f"{artifact.path.name}, closed-loop step {t}: {b}" for b in bad]
        eager_states = expected[n_actions : n_actions + n_states]
        artifact_states = [np.asarray(x) for x in got[n_actions : n_actions + n_states]]
    return problems


def golden_io(policy: DeployPolicy, fixed_batch: int | None = None) -> dict[str, np.ndarray]:
    """Recorded inputs and expected outputs: a batch of samples, and the recurrent rollout."""
    data: dict[str, np.ndarray] = {}
    batch = parity_cases(policy, samples=64, fixed_batch=fixed_batch)[0]
    for name, value in zip(policy.input_names, batch):
        data[f"batch/in/{name}"] = value
    for name, value in zip(policy.output_names, _eager(policy, batch)):
        data[f"batch/out/{name}"] = value
    if policy.slots:
        rollout = recurrent_rollout(policy, batch=fixed_batch or 4)
        for i, name in enumerate(policy.input_names):
            data[f"rollout/in/{name}"] = np.stack([row[i] for row in rollout])
        outs = [_eager(policy, row) for row in rollout]
        for i, name in enumerate(policy.output_names):
            data[f"rollout/out/{name}"] = np.stack([o[i] for o in outs])
    return data


# ---------------------------------------------------------------- metadata and the bundle


def _layout_metadata(policy: DeployPolicy, example: tuple) -> dict[str, Any]:
    model = policy.model
    observations = []
    for key, tensor in zip(policy.obs_keys, example):
        info = model.inputs[key]
        entry = {
            "name": key,
            "shape": list(info.space.shape),
            "dtype": str(tensor.dtype).replace("torch.", ""),
            "space": describe_space(info.space),
            "kind": info.kind,
            "normalized": policy.model.preprocessor.normalizer(key) is not None,
        }
        if hasattr(info.space, "low"):
            entry["low"] = _jsonable(info.space.low)
            entry["high"] = _jsonable(info.space.high)
        if key == model.mask_key:
            entry["role"] = "action_mask"
        observations.append(entry)
    actions = []
    for name, part in zip(policy.output_names, model.layout.parts):
        entry = {"name": name, "space": describe_space(part.space), "kind": part.kind, "shape": list(part.space.shape)}
        if part.kind == "gaussian":
            bounds = policy.head.bounds
            entry.update(
                {
                    "low": list(part.low),
                    "high": list(part.high),
                    "bounds": bounds,
                    "mapping": {
                        "clip": "mean clipped to [low, high]",
                        "tanh": "low + (tanh(mean) + 1) / 2 * (high - low)",
                        "none": "the mean, unbounded",
                    }[bounds],
                }
            )
        else:
            entry["mapping"] = "argmax" if part.kind != "bernoulli" else "probability > 0.5"
        actions.append(entry)
    return {
        "observations": observations,
        "actions": actions,
        "state": [
            {"input": f"{s.name}_in", "output": f"{s.name}_out", "shape": ["batch", s.layers, s.hidden]}
            for s in policy.slots
        ],
        "reset": "reset" if policy.slots else None,
        "inputs": policy.input_names,
        "outputs": policy.output_names,
    }


def _jsonable(array) -> Any:
    values = np.asarray(array, dtype=np.float64)
    return [None if not math.isfinite(v) else v for v in values.ravel().tolist()] if values.size <= 64 else "large"


def export_bundle(
    model: ActorCritic,
    spec: dict,
    out_dir: str | Path,
    formats: tuple[str, ...] = FORMATS,
    opset: int = 18,
    batch: str | int = "dynamic",
    with_value: bool = False,
    legacy_onnx: bool = False,
) -> ExportReport:
    """Write the bundle and run the parity gate; raise ExportError if any artifact disagrees."""
    import onnx
    import onnxscript

    model = model.cpu().eval()
    policy = DeployPolicy(model, with_value).eval()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    example = example_inputs(policy, 2 if batch == "dynamic" else int(batch))
    spec_text = json.dumps(spec, sort_keys=True)
    metadata = {
        "sfspec_version": __version__,
        "spec_sha256": _sha256(spec_text.encode()),
        "weights_sha256": weights_sha256(model),
        "torch_version": torch.__version__,
        "onnx_version": onnx.__version__,
        "onnxscript_version": onnxscript.__version__,
        "exporter": "torch.onnx (TorchScript-based, legacy)" if legacy_onnx else "torch.onnx dynamo (torch.export)",
        "opset": opset,
        "batch": batch,
        "deterministic": True,
        "with_value": with_value,
        "env_id": spec["env"]["id"],
        "spec": spec,
        **_layout_metadata(policy, example),
    }
    writers = {
        "torchscript": lambda p: _write_torchscript(policy, example, p),
        "pt2": lambda p: _write_pt2(policy, example, batch, p),
        "onnx": lambda p: _write_onnx(policy, example, batch, opset, legacy_onnx, metadata, p),
    }
    written = []
    for fmt in formats:
        path = out_dir / FILES[fmt]
        try:
            writers[fmt](path)
        except Exception as exc:
            raise ExportError(f"{fmt} export failed: {type(exc).__name__}: {exc}") from exc
        written.append(path)
    artifacts = [Artifact(fmt, out_dir / FILES[fmt], policy.input_names) for fmt in formats]
    fixed = None if batch == "dynamic" else int(batch)
    worst = check_parity(policy, artifacts, fixed)
    golden = golden_io(policy, fixed)
    buffer = io.BytesIO()
    np.savez(buffer, **golden)
    atomic_write(out_dir / "golden_io.npz", lambda f: f.write(buffer.getvalue()))
    # The same data for C++ (LibTorch reads torch.save's format with torch::jit::pickle_load).
    for_cpp = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in golden.items()}
    for_cpp.update(input_names="\n".join(policy.input_names), output_names="\n".join(policy.output_names))
    buffer = io.BytesIO()
    torch.save(for_cpp, buffer)
    atomic_write(out_dir / "golden_io.pt", lambda f: f.write(buffer.getvalue()))
    metadata["files"] = {fmt: FILES[fmt] for fmt in formats}
    metadata["parity_worst_abs_error"] = worst
    atomic_write_text(out_dir / "policy.json", json.dumps(metadata, indent=2) + "\n")
    return ExportReport(out_dir, [p.name for p in written] + ["golden_io.npz", "golden_io.pt", "policy.json"], worst)


# ---------------------------------------------------------------- checking a bundle


def check_bundle(bundle: str | Path, latency_runs: int = 200) -> dict[str, dict[str, float]]:
    """Replay ``golden_io.npz`` through every artifact; worst error and batch-1 latency (one thread)."""
    import time

    bundle = Path(bundle)
    meta = json.loads((bundle / "policy.json").read_text())
    golden = np.load(bundle / "golden_io.npz")
    inputs, outputs = meta["inputs"], meta["outputs"]
    torch.set_num_threads(1)
    report: dict[str, dict[str, float]] = {}
    for fmt, name in meta["files"].items():
        artifact = Artifact(fmt, bundle / name, inputs)
        worst, problems = 0.0, []
        batch_in = [golden[f"batch/in/{n}"] for n in inputs]
        err, bad = compare([golden[f"batch/out/{n}"] for n in outputs], artifact(batch_in), outputs)
        worst, problems = max(worst, err), problems + bad
        if f"rollout/in/{inputs[0]}" in golden:
            steps = golden[f"rollout/in/{inputs[0]}"].shape[0]
            for t in range(steps):
                err, bad = compare(
                    [golden[f"rollout/out/{n}"][t] for n in outputs],
                    artifact([golden[f"rollout/in/{n}"][t] for n in inputs]),
                    outputs,
                )
                worst, problems = max(worst, err), problems + [f"rollout step {t}: {b}" for b in bad]
        rows = 1 if meta["batch"] == "dynamic" else int(meta["batch"])  # batch 1 unless the bundle fixes it
        one = [x[:rows] for x in batch_in]
        for _ in range(10):
            artifact(one)
        times = []
        for _ in range(latency_runs):
            start = time.perf_counter()
            artifact(one)
            times.append(time.perf_counter() - start)
        report[fmt] = {
            "worst_abs_error": worst,
            "mismatches": len(problems),
            "latency_median_ms": float(np.median(times) * 1e3),
            "latency_p99_ms": float(np.percentile(times, 99) * 1e3),
        }
        if problems:
            report[fmt]["first_mismatch"] = problems[0]  # type: ignore[assignment]
    return report
