"""Action heads: distribution parameters from features, and the distributions over flat actions.

Every action space is handled as one flat float tensor (batch, layout.size): a categorical part
takes one column (the index), a MultiDiscrete part one per dimension, MultiBinary one per bit and
a Box part one per dimension. The distribution math is written out (no torch.distributions) so it
stays cheap in the rollout loop and exports cleanly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sfspec.compiler.config import StdConfig
from sfspec.compiler.spaces import ActionLayout, ActionPart

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
_MASKED_LOGIT = -1e8  # finite, so a fully masked row stays a number


class ActionHead(nn.Module):
    """Linear layer from features to the parameters of every action part."""

    def __init__(self, in_size: int, layout: ActionLayout, std: StdConfig, bounds: str):
        super().__init__()
        self.layout = layout
        self.bounds = bounds
        self.state_dependent_std = std.state_dependent
        self.log_std_min = math.log(std.min)
        self.log_std_max = math.log(std.max)
        self.param_sizes = [self._param_size(p) for p in layout.parts]
        self.linear = nn.Linear(in_size, sum(self.param_sizes))
        gaussian_dims = sum(p.size for p in layout.parts if p.kind == "gaussian")
        if gaussian_dims and not self.state_dependent_std:
            self.log_std = nn.Parameter(torch.full((gaussian_dims,), math.log(std.init)))
        else:
            self.register_parameter("log_std", None)
        if self.state_dependent_std:
            self.std_bias = math.log(std.init)
        low = [v for p in layout.parts if p.kind == "gaussian" for v in p.low]
        high = [v for p in layout.parts if p.kind == "gaussian" for v in p.high]
        self.register_buffer("low", torch.tensor(low, dtype=torch.float32), persistent=False)
        self.register_buffer("high", torch.tensor(high, dtype=torch.float32), persistent=False)
        offsets = [float(o) for p in layout.parts for o in (p.offset if p.discrete and p.offset else [0.0] * p.size)]
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.float32), persistent=False)
        self.has_offsets = any(offsets)
        same = low and len(set(low)) == 1 and len(set(high)) == 1
        self.uniform_bounds = (low[0], high[0]) if same else None
        # Python facts fixed at build time, so to_env reads no tensor shape (traces stay warning-free).
        self.gaussian_columns = _gaussian_columns(layout)
        self.only_gaussian = len(self.gaussian_columns) == layout.size

    def _param_size(self, part: ActionPart) -> int:
        if part.kind in ("categorical", "multi_categorical"):
            return sum(part.categories)
        if part.kind == "bernoulli":
            return part.size
        return part.size * (2 if self.state_dependent_std else 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Distribution parameters (batch, P)."""
        return self.linear(features)

    def distribution(self, params: torch.Tensor, mask: torch.Tensor | None = None) -> ActionDistribution:
        """The action distribution for these parameters (and an optional discrete-action mask)."""
        return ActionDistribution(self, params, mask)

    def to_env(self, actions: torch.Tensor) -> torch.Tensor:
        """Flat actions in the environment's units: bounds applied, discrete start offsets added."""
        # Each step here is skipped when it would do nothing: exported graphs stay as small as the policy.
        out = actions + self.offsets if self.has_offsets else actions
        columns = self.gaussian_columns
        if not columns or self.bounds == "none":
            return out
        raw = actions if self.only_gaussian else actions[:, columns]
        if self.bounds == "clip" and self.uniform_bounds is not None:  # one Clip op with scalar bounds
            mapped = raw.clamp(*self.uniform_bounds)
        elif self.bounds == "clip":
            mapped = torch.maximum(torch.minimum(raw, self.high), self.low)
        else:  # tanh: squash into (low, high)
            mapped = self.low + (torch.tanh(raw) + 1.0) * 0.5 * (self.high - self.low)
        return mapped if self.only_gaussian else _put_columns(out, columns, mapped, self.layout.size)


def _gaussian_columns(layout: ActionLayout) -> list[int]:
    """The flat-action columns that belong to Gaussian (Box) parts."""
    columns, start = [], 0
    for part in layout.parts:
        if part.kind == "gaussian":
            columns += list(range(start, start + part.size))
        start += part.size
    return columns


def _put_columns(base: torch.Tensor, columns: list[int], values: torch.Tensor, width: int) -> torch.Tensor:
    """``base`` (batch, width) with ``columns`` replaced by ``values`` (export-friendly: no in-place writes)."""
    pieces, j = [], 0
    for c in range(width):
        if j < len(columns) and columns[j] == c:
            pieces.append(values[:, j : j + 1])
            j += 1
        else:
            pieces.append(base[:, c : c + 1])
    return torch.cat(pieces, dim=1)


class ActionDistribution:
    """The joint distribution of all action parts (independent), over flat actions."""

    def __init__(self, head: ActionHead, params: torch.Tensor, mask: torch.Tensor | None):
        self.head = head
        self._log_softmax_cache: dict[int, list[torch.Tensor]] = {}
        self.parts: list[tuple[ActionPart, torch.Tensor, torch.Tensor | None]] = []
        p_start, m_start, g_start = 0, 0, 0
        for part, size in zip(head.layout.parts, head.param_sizes):
            p = params[:, p_start : p_start + size]
            p_start += size
            extra = None
            if part.kind in ("categorical", "multi_categorical"):
                width = sum(part.categories)
                if mask is not None:
                    p = p.masked_fill(mask[:, m_start : m_start + width] < 0.5, _MASKED_LOGIT)
                m_start += width
            elif part.kind == "gaussian":
                if head.state_dependent_std:
                    mean, log_std = p[:, : part.size], p[:, part.size :] + head.std_bias
                else:
                    mean, log_std = p, head.log_std[g_start : g_start + part.size].expand_as(p)
                g_start += part.size
                p, extra = mean, log_std.clamp(head.log_std_min, head.log_std_max)
            self.parts.append((part, p, extra))

    def _columns(self, actions: torch.Tensor):
        start = 0
        for part, p, extra in self.parts:
            yield part, p, extra, actions[:, start : start + part.size]
            start += part.size

    def sample(self) -> torch.Tensor:
        """A random flat action per row."""
        out = []
        for part, p, extra in self.parts:
            if part.kind == "gaussian":
                out.append(p + extra.exp() * torch.randn_like(p))
            elif part.kind == "bernoulli":
                out.append((torch.rand_like(p) < torch.sigmoid(p)).to(p.dtype))
            else:
                out.append(torch.stack([_gumbel_argmax(lg) for lg in _split(p, part.categories)], dim=1).to(p.dtype))
        return torch.cat(out, dim=1)

    def mode(self) -> torch.Tensor:
        """The most likely flat action per row (the mean for Gaussians)."""
        out = []
        for part, p, _ in self.parts:
            if part.kind == "gaussian":
                out.append(p)
            elif part.kind == "bernoulli":
                out.append((p > 0).to(p.dtype))
            else:
                out.append(torch.stack([lg.argmax(dim=1) for lg in _split(p, part.categories)], dim=1).to(p.dtype))
        return torch.cat(out, dim=1) if len(out) > 1 else out[0]

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        """Log-probability (batch,) of flat actions, tanh squashing included."""
        total = torch.zeros(actions.shape[0], device=actions.device, dtype=actions.dtype)
        g_start = 0
        for index, (part, p, extra, a) in enumerate(self._columns(actions)):
            if part.kind == "gaussian":
                z = (a - p) / extra.exp()
                total = total + (-0.5 * z * z - extra - _LOG_SQRT_2PI).sum(dim=1)
                if self.head.bounds == "tanh":
                    span = self.head.high[g_start : g_start + part.size] - self.head.low[g_start : g_start + part.size]
                    total = total - (torch.log(span * 0.5) + _log1m_tanh2(a)).sum(dim=1)
                g_start += part.size
            elif part.kind == "bernoulli":
                total = total - F.binary_cross_entropy_with_logits(p, a, reduction="none").sum(dim=1)
            else:
                for i, logp in enumerate(self._log_softmax(index)):
                    total = total + logp.gather(1, a[:, i : i + 1].long()).squeeze(1)
        return total

    def entropy(self) -> torch.Tensor:
        """Entropy (batch,); for tanh-squashed Gaussians, that of the Gaussian before squashing."""
        total = 0.0
        for index, (part, p, extra) in enumerate(self.parts):
            if part.kind == "gaussian":
                total = total + (0.5 + _LOG_SQRT_2PI + extra).sum(dim=1)
            elif part.kind == "bernoulli":
                prob = torch.sigmoid(p)
                total = total + F.binary_cross_entropy_with_logits(p, prob, reduction="none").sum(dim=1)
            else:
                for logp in self._log_softmax(index):
                    total = total - (logp.exp() * logp).sum(dim=1)
        return total

    def _log_softmax(self, index: int) -> list[torch.Tensor]:
        """Log-probabilities of part ``index``'s categoricals, computed once for log_prob and entropy."""
        if index not in self._log_softmax_cache:
            part, logits, _ = self.parts[index]
            self._log_softmax_cache[index] = [F.log_softmax(lg, dim=1) for lg in _split(logits, part.categories)]
        return self._log_softmax_cache[index]


def _split(logits: torch.Tensor, sizes: tuple) -> tuple[torch.Tensor, ...]:
    return torch.split(logits, list(sizes), dim=1) if len(sizes) > 1 else (logits,)


def _gumbel_argmax(logits: torch.Tensor) -> torch.Tensor:
    """Sample a categorical by the Gumbel-max trick (one random draw, no multinomial)."""
    u = torch.rand_like(logits).clamp_(1e-10, 1.0 - 1e-7)
    return (logits - torch.log(-torch.log(u))).argmax(dim=1)


def _log1m_tanh2(x: torch.Tensor) -> torch.Tensor:
    """log(1 - tanh(x)^2), computed stably."""
    return 2.0 * (math.log(2.0) - x - F.softplus(-2.0 * x))
