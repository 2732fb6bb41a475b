"""Inputs the parity gate and the golden data use: samples, edge cases, recurrent rollouts."""

from __future__ import annotations

import numpy as np
import torch

from sfspec.export.policy import DeployPolicy


def _obs_sample(policy: DeployPolicy, batch: int, generator: torch.Generator, spread: float = 1.0) -> list:
    """Raw observations around the normaliser's statistics (or within the space for other kinds)."""
    out = []
    for key, info in policy.obs_inputs.items():
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
            mean, std = _raw_statistics(policy, key, tuple(space.shape))
            low, high = _finite_bounds(space)
            x = mean + std * spread * torch.randn(shape, generator=generator)
            out.append(torch.minimum(torch.maximum(x, low), high).to(torch.float32))
    return out


def _raw_statistics(policy: DeployPolicy, key: str, shape: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of one input in the bundle's (raw) units, from its normaliser (0 and 1 without one).

    Where the robot interface scales the input (and stacks it), the newest frame's statistics are
    mapped back through ``(x - offset) * scale``.
    """
    rms = policy.model.preprocessor.normalizer(key)
    if rms is None:
        return torch.zeros(shape), torch.ones(shape)
    mean, std = rms.mean.to(torch.float32), rms.var.sqrt().to(torch.float32)
    interface = policy.interface
    if interface is None or key not in interface.keys:
        return mean.reshape(shape), std.reshape(shape)
    size = interface.frame_sizes[key]
    scale, offset = interface.constants(key)
    mean = mean.reshape(-1)[-size:].reshape(shape) / scale + offset
    return mean, (std.reshape(-1)[-size:].reshape(shape) / scale).abs()


def _finite_bounds(space) -> tuple[torch.Tensor, torch.Tensor]:
    low = torch.as_tensor(np.nan_to_num(np.asarray(space.low, dtype=np.float64), neginf=-1e6), dtype=torch.float32)
    high = torch.as_tensor(np.nan_to_num(np.asarray(space.high, dtype=np.float64), posinf=1e6), dtype=torch.float32)
    return low, high


def _edge_cases(policy: DeployPolicy) -> list[list]:
    """Zeros, the bounds, and large values for continuous inputs (batch of 1 each)."""
    cases = []
    for which in ("zeros", "low", "high", "large"):
        row = []
        for key, info in policy.obs_inputs.items():
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
    info = policy.obs_inputs[key]
    if info.kind in ("discrete", "multi_discrete"):
        return torch.int64
    if info.kind == "multi_binary":
        return torch.int8
    return torch.uint8 if info.space.dtype == np.uint8 else torch.float32


def _state_inputs(policy: DeployPolicy, batch: int, reset: torch.Tensor | None = None) -> list:
    if not policy.slots:
        return []
    states = [torch.zeros(batch, *s.shape) for s in policy.slots]
    return states + [reset if reset is not None else torch.ones(batch, dtype=torch.float32)]


def example_inputs(policy: DeployPolicy, batch: int = 2) -> tuple:
    """Inputs for tracing and exporting."""
    gen = torch.Generator().manual_seed(0)
    return tuple(_obs_sample(policy, batch, gen) + _state_inputs(policy, batch))


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
        states = [torch.randn(64, *s.shape, generator=gen) * 0.5 for s in policy.slots]
        batches.append(obs + states + [torch.zeros(64)])
    return [[t.numpy() for t in batch] for batch in _rebatch(batches, fixed_batch)]


def _random_resets(batch: int, gen: torch.Generator) -> torch.Tensor:
    return (torch.rand(batch, generator=gen) < 0.5).to(torch.float32)


def recurrent_rollout(policy: DeployPolicy, steps: int = 50, batch: int = 4, seed: int = 1) -> list[list[np.ndarray]]:
    """Per step inputs of a rollout fed back from the eager model's states, reset at the middle."""
    gen = torch.Generator().manual_seed(seed)
    n_obs, n_states = len(policy.obs_keys), len(policy.slots)
    states = [torch.zeros(batch, *s.shape) for s in policy.slots]
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
