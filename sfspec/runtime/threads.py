"""The CPU thread policy: how many threads torch computes with, for training, evaluation and export.

torch starts with one thread per core. For the small networks of most policies that is a loss:
each op is too small to split, and the threads wait on each other at every op. On a machine whose
cores are shared with another busy process it is a collapse (a waiting thread spins while the one
it waits for is descheduled): 3 to 9 times slower for an MLP, and up to 20 times for a recurrent
core stepped at a small batch. ``train.threads: auto`` (the default) therefore uses one thread
unless one forward pass is large enough to pay for more. Torch-free; measured in benchmarks/threads.py.
"""

from __future__ import annotations

import os

# Multiply-adds of one forward pass (parameters x batch) from which a second thread pays back, even
# with the cores shared; below it one thread is as fast or faster (benchmarks/threads.py).
WORK_PER_THREAD = 1 << 26
MAX_AUTO_THREADS = 8  # beyond this the small ops of a policy do not scale


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, as taskset and cgroups cpusets set it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def auto_threads(params: int, batch: int, recurrent: bool = False, cores: int | None = None) -> int:
    """Threads for a model of ``params`` parameters run at ``batch`` rows at a time.

    One thread for recurrent cores (their per-step ops are tiny; more threads are many times slower)
    and for small work; otherwise one per ``WORK_PER_THREAD`` multiply-adds, at most half the cores
    (the other half for the simulator and the neighbours) and ``MAX_AUTO_THREADS``.
    """
    cores = available_cores() if cores is None else cores
    if recurrent:
        return 1
    wanted = (params * batch) // WORK_PER_THREAD
    return max(1, min(wanted, cores // 2, MAX_AUTO_THREADS))


def env_threads() -> int | None:
    """``OMP_NUM_THREADS`` when the user set it to a positive integer: auto never overrides it."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def choose_threads(setting: int | str, params: int, batch: int, recurrent: bool, cuda: bool = False) -> int:
    """The thread count for ``train.threads`` (an integer, or 'auto'); on CUDA the host needs one."""
    if setting != "auto":
        return int(setting)
    fixed = env_threads()
    if fixed is not None:
        return fixed
    return 1 if cuda else auto_threads(params, batch, recurrent)


def set_threads(count: int) -> int:
    """Set torch's intra-op thread count (only when it differs: setting it is not free); returns it."""
    import torch

    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count


def apply_to_model(setting: int | str, model, batch: int, device=None) -> int:
    """Choose and set the thread count for running ``model`` (an ActorCritic) at ``batch`` rows."""
    params = sum(p.numel() for p in model.parameters())
    cuda = device is not None and getattr(device, "type", str(device)).startswith("cuda")
    return set_threads(choose_threads(setting, params, batch, bool(getattr(model, "state_size", 0)), cuda))
