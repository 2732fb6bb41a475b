"""The parity gate: every artifact against a float64 eager reference, within the model's own float32 noise.

A fixed tolerance cannot serve every model: in a deep network (an IMPALA CNN into a GRU) float32
results depend on the order of the sums, and onnxruntime's kernels legitimately differ from eager
PyTorch by more than 1e-5. So the gate measures how far eager float32 itself is from a float64 run
of the same model on the same inputs (its conditioning), and lets each artifact be at most
``NOISE_FACTOR`` times that far from float64, plus a small floor (``ATOL``, ``RTOL``). A genuinely
wrong artifact (weights off by 2 %) is orders of magnitude further.

Discrete actions must equal eager's exactly, except at near-ties: where the float64 reference's
best two choices are closer than float32 noise, either answer is right; such differences are
reported as near-ties, never hidden, and do not fail the gate. Non-finite outputs always fail, and so
do non-finite logits behind a discrete action (its margin is NaN).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from sfspec.export.errors import ExportError
from sfspec.export.policy import DeployPolicy
from sfspec.export.samples import parity_cases, recurrent_rollout

ATOL, RTOL = 1e-5, 1e-4  # the floor: what any artifact may differ by regardless of the model
NOISE_FACTOR = 4.0  # an artifact may be this many times as far from float64 as eager float32 is
CHECK_FACTOR = NOISE_FACTOR + 2.0  # against recorded eager outputs (triangle inequality, with slack)


@dataclass
class Expected:
    """What one input batch should produce."""

    eager: list[np.ndarray]  # float32 eager outputs (what golden data records)
    exact: list[np.ndarray]  # float64 reference outputs (eager's own without a float64 run)
    margins: list  # per output: float64 decision margins of discrete actions, else None
    margins32: list  # the same from the float32 run


@dataclass
class Verdict:
    """How one artifact output set compared."""

    worst: float = 0.0  # worst absolute difference from eager float32
    problems: list[str] = field(default_factory=list)
    near_ties: list[str] = field(default_factory=list)


def _as_tensors(inputs: list[np.ndarray], float64: bool = False) -> list[torch.Tensor]:
    out = []
    for x in inputs:
        t = torch.from_numpy(np.ascontiguousarray(x))
        out.append(t.to(torch.float64) if float64 and t.dtype == torch.float32 else t)
    return out


def _numpy(values) -> list:
    return [None if v is None else v.detach().numpy() for v in values]


class Reference:
    """Eager float32 and float64 runs of a deployed policy."""

    def __init__(self, policy: DeployPolicy, probe: list[np.ndarray]):
        self.policy = policy
        self.float64: DeployPolicy | None = None
        self.description = "float64 eager PyTorch"
        try:
            self.float64 = policy.float64_copy()
            with torch.no_grad():
                self.float64.outputs_and_margins(*_as_tensors(probe, float64=True))
        except Exception as exc:  # a custom layer fixed to float32: fall back to the fixed floor
            self.float64 = None
            self.description = f"float32 eager PyTorch (the model does not run in float64: {type(exc).__name__})"

    @torch.no_grad()
    def expect(self, inputs: list[np.ndarray], inputs64: list[np.ndarray] | None = None) -> Expected:
        """Eager and reference outputs (and decision margins) for one batch (``inputs64``: the reference's own)."""
        eager, margins32 = self.policy.outputs_and_margins(*_as_tensors(inputs))
        if self.float64 is None:
            return Expected(_numpy(eager), _numpy(eager), _numpy(margins32), _numpy(margins32))
        feed = _as_tensors(inputs if inputs64 is None else inputs64, float64=True)
        exact, margins = self.float64.outputs_and_margins(*feed)
        return Expected(_numpy(eager), _numpy(exact), _numpy(margins), _numpy(margins32))

    def closed_loop(self, rollout: list[list[np.ndarray]]) -> list[Expected]:
        """The rollout's observations, eager and reference each fed back their own states."""
        n_obs, n_states, n_actions = _counts(self.policy)
        eager_states = exact_states = list(rollout[0][n_obs : n_obs + n_states])
        out = []
        for row in rollout:
            obs, reset = row[:n_obs], row[-1:]
            expected = self.expect(obs + eager_states + reset, obs + exact_states + reset)  # float64 states stay so
            eager_states = expected.eager[n_actions : n_actions + n_states]
            exact_states = expected.exact[n_actions : n_actions + n_states]
            out.append(expected)
        return out


def _counts(policy: DeployPolicy) -> tuple[int, int, int]:
    """(observations, state tensors, action outputs) of a deployed policy."""
    n_obs, n_states = len(policy.obs_keys), len(policy.slots)
    return n_obs, n_states, len(policy.output_names) - n_states - (1 if policy.with_value else 0)


def noise(group: list[Expected]) -> list[float]:
    """Per output, over a group of batches: eager float32's worst distance from float64.

    For continuous outputs, of the values; for discrete actions, of the decision margins.
    """
    out = []
    for i in range(len(group[0].eager)):
        worst = 0.0
        for e in group:
            if e.margins[i] is not None:
                a, b = e.margins32[i].astype(np.float64), e.margins[i].astype(np.float64)
                finite = np.isfinite(a) & np.isfinite(b)
                diff = np.abs(a[finite] - b[finite])
            elif np.issubdtype(e.eager[i].dtype, np.integer):
                diff = np.zeros(0)
            else:
                diff = np.abs(e.eager[i].astype(np.float64) - e.exact[i].astype(np.float64))
            worst = max(worst, float(diff.max()) if diff.size else 0.0)
        out.append(worst)
    return out


def ties(expected: Expected, group_noise: list[float]) -> list:
    """Per output: where a discrete action is a near-tie (float64 margin within float32 noise), else None."""
    out = []
    for margin, n in zip(expected.margins, group_noise):
        out.append(None if margin is None else margin <= (NOISE_FACTOR + 1.0) * n + ATOL)
    return out


def judge(names: list[str], got: list, reference: list, eager: list, allowance: list, tie_masks: list) -> Verdict:
    """Compare outputs: continuous within ``allowance`` (+ floor) of ``reference``; discrete equal to ``eager``."""
    verdict = Verdict()
    for name, g, ref, e, allowed, tie in zip(names, got, reference, eager, allowance, tie_masks):
        g = np.asarray(g)
        if g.shape != e.shape:
            verdict.problems.append(f"{name}: shape {g.shape}, expected {e.shape}")
        elif np.issubdtype(e.dtype, np.integer):
            _judge_discrete(verdict, name, g, e, tie)
        elif not np.issubdtype(g.dtype, np.floating):
            verdict.problems.append(f"{name}: {g.dtype} values, expected floating point")
        elif not np.isfinite(g).all():
            verdict.problems.append(f"{name}: {int((~np.isfinite(g)).sum())} non-finite values (NaN or inf)")
        else:
            ref64 = ref.astype(np.float64)
            err = np.abs(g.astype(np.float64) - ref64)
            over = ~(err <= allowed + ATOL + RTOL * np.abs(ref64))  # written so that NaN counts as over
            if g.size:
                verdict.worst = max(verdict.worst, float(np.abs(g.astype(np.float64) - e).max()))
            if over.any():
                verdict.problems.append(
                    f"{name}: {int(over.sum())} values off, worst {float(err.max()):.3g} "
                    f"(allowed {allowed + ATOL:.3g} + {RTOL:g} x |value|)"
                )
    return verdict


def _judge_discrete(verdict: Verdict, name: str, got: np.ndarray, eager: np.ndarray, tie) -> None:
    if not np.issubdtype(got.dtype, np.integer):
        verdict.problems.append(f"{name}: {got.dtype} values, expected integers")
        return
    differ = got != eager
    tie = np.zeros_like(differ) if tie is None else np.asarray(tie, dtype=bool)
    real, near = int((differ & ~tie).sum()), int((differ & tie).sum())
    if real:
        verdict.problems.append(f"{name}: {real} of {eager.size} discrete values differ")
    if near:
        verdict.near_ties.append(
            f"{name}: {near} of {eager.size} discrete values differ at near-ties "
            "(the float64 reference's two best choices are within float32 noise of each other)"
        )


def require_finite(names: list[str], expected: Expected, label: str) -> None:
    """Refuse to export a model whose own outputs, or the logits of its discrete actions, are NaN or infinite.

    A discrete action hides its logits: argmax of NaN logits is 0 in every runtime, so artifacts agree
    and only the margins (NaN where a logit is not finite) show the fault.
    """
    runs = (
        (expected.eager, expected.margins32, "eager float32"),
        (expected.exact, expected.margins, "float64 reference"),
    )
    for values, margins, run in runs:
        for name, value, margin in zip(names, values, margins):
            if margin is not None and np.isnan(margin).any():
                what = f"action logits behind '{name}' are"
            elif np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
                what = f"output '{name}' is"
            else:
                continue
            raise ExportError(
                f"parity check failed: the model's {run} {what} not finite (NaN or inf) "
                f"on {label}; refusing to export a policy that computes non-finite values"
            )


# ---------------------------------------------------------------- the gate


@dataclass
class Group:
    """Batches judged against one noise estimate: a parity case, the golden batch, a rollout."""

    label: str
    inputs: list[list[np.ndarray]]
    expected: list[Expected]
    noise: list[float]
    closed_loop: bool = False  # feed the artifact its own states back, as a controller would

    def step_label(self, t: int) -> str:
        """How a problem names the batch."""
        return self.label if len(self.inputs) == 1 else f"{self.label} step {t}"


def make_group(reference: Reference, label: str, inputs: list, closed_loop: bool = False) -> Group:
    """Run the reference on a group's batches, check they are finite and measure their noise."""
    expected = reference.closed_loop(inputs) if closed_loop else [reference.expect(x) for x in inputs]
    for t, e in enumerate(expected):
        require_finite(reference.policy.output_names, e, label if len(inputs) == 1 else f"{label} step {t}")
    return Group(label, inputs, expected, noise(expected), closed_loop)


@dataclass
class ParityResult:
    """What the gate found for every artifact."""

    worst: dict[str, float]
    near_ties: dict[str, list[str]]
    reference: str

    def record(self) -> dict:
        """How the gate measured, for policy.json's ``parity``."""
        return {
            "reference": self.reference,
            "noise_factor": NOISE_FACTOR,
            "floor": {"atol": ATOL, "rtol": RTOL},
            "near_ties": {fmt: len(found) for fmt, found in self.near_ties.items()},
        }


def parity_gate(
    policy: DeployPolicy, artifacts: list, probe: tuple, fixed_batch: int | None
) -> tuple[ParityResult, list[Group]]:
    """Judge every artifact on every input group (ExportError if any disagrees); also the golden groups.

    ``probe`` is an example input (it decides whether the model runs in float64);
    ``fixed_batch`` the batch size of a fixed-batch export (None: dynamic).
    """
    reference = Reference(policy, [x.numpy() for x in probe])
    cases = parity_cases(policy, fixed_batch=fixed_batch)
    groups = [make_group(reference, f"case {i}", [case]) for i, case in enumerate(cases)]
    golden = [make_group(reference, "golden batch", [parity_cases(policy, samples=64, fixed_batch=fixed_batch)[0]])]
    if policy.slots:
        rows = recurrent_rollout(policy, batch=fixed_batch or 4)
        golden.append(make_group(reference, "rollout", rows))
        groups.append(make_group(reference, "closed-loop rollout", rows, closed_loop=True))
    return check_parity(policy, artifacts, groups + golden, reference), golden


def check_parity(policy: DeployPolicy, artifacts: list, groups: list[Group], reference: Reference) -> ParityResult:
    """Every artifact on every group; ExportError listing the worst problems if any artifact disagrees."""
    names = policy.output_names
    worst: dict[str, float] = {}
    near: dict[str, list[str]] = {}
    problems: list[str] = []
    for artifact in artifacts:
        worst[artifact.kind], near[artifact.kind] = 0.0, []
        for group in groups:
            runs = _run_closed_loop(policy, artifact, group) if group.closed_loop else map(artifact, group.inputs)
            for t, (got, expected) in enumerate(zip(runs, group.expected)):
                allowance = [NOISE_FACTOR * n for n in group.noise]
                verdict = judge(names, got, expected.exact, expected.eager, allowance, ties(expected, group.noise))
                worst[artifact.kind] = max(worst[artifact.kind], verdict.worst)
                where = f"{artifact.path.name}, {group.step_label(t)}"
                problems += [f"{where}: {p}" for p in verdict.problems]
                near[artifact.kind] += [f"{where}: {p}" for p in verdict.near_ties]
    if problems:
        shown = "\n  ".join(problems[:10])
        raise ExportError(f"parity check failed ({len(problems)} mismatches):\n  {shown}")
    return ParityResult(worst, near, reference.description)


def _run_closed_loop(policy: DeployPolicy, artifact, group: Group):
    """The artifact's outputs over a rollout, fed its own states back (a generator: one step at a time)."""
    n_obs, n_states, n_actions = _counts(policy)
    states = list(group.inputs[0][n_obs : n_obs + n_states])
    for row in group.inputs:
        got = artifact(row[:n_obs] + states + row[-1:])
        states = [np.asarray(x) for x in got[n_actions : n_actions + n_states]]
        yield got


def golden_arrays(prefix: str, policy: DeployPolicy, group: Group) -> dict[str, np.ndarray]:
    """A group as golden data: inputs, eager outputs, noise per continuous output, near-ties per discrete one."""
    stack = len(group.inputs) > 1  # a rollout: stacked over steps
    data: dict[str, np.ndarray] = {}

    def put(key: str, values: list) -> None:
        data[key] = np.stack(values) if stack else values[0]

    for i, name in enumerate(policy.input_names):
        put(f"{prefix}/in/{name}", [x[i] for x in group.inputs])
    for i, name in enumerate(policy.output_names):
        put(f"{prefix}/out/{name}", [e.eager[i] for e in group.expected])
        if np.issubdtype(group.expected[0].eager[i].dtype, np.integer):
            put(f"{prefix}/tie/{name}", [_tie_or_none(e, group.noise, i) for e in group.expected])
        else:
            data[f"{prefix}/noise/{name}"] = np.float64(group.noise[i])
    return data


def _tie_or_none(expected: Expected, group_noise: list[float], i: int) -> np.ndarray:
    mask = ties(expected, group_noise)[i]
    return np.zeros(expected.eager[i].shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
