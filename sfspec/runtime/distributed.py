"""Data-parallel training on torch.distributed: torchrun's environment, the process group, the communicator.

``torchrun`` starts one process per rank and tells each who it is (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``TORCHELASTIC_RESTART_COUNT``, ``TORCHELASTIC_RUN_ID``). The runner reads that with
``torchrun_launch``, opens the process group with ``open_communicator`` (NCCL for CUDA on
``cuda:LOCAL_RANK``, gloo on CPU) and hands the communicator to the algorithm, which reduces at its
own synchronisation points. A single process gets ``NoComm``: every method returns at once, so a
run without torchrun does exactly what it did before (no extra synchronisation, no extra copies).
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
from torch import nn

from sfspec.io import atomic_write_text
from sfspec.runtime.errors import TrainingError

# A rank that stops answering (hung, not dead: a dead one closes its sockets at once) ends the job after this.
TIMEOUT_ENV = "SFSPEC_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Launch:
    """Who this process is in a torchrun job."""

    rank: int
    world_size: int
    local_rank: int
    restart_count: int  # worker-group restarts so far (torchrun --max-restarts)
    run_id: str  # the same for every attempt of one torchrun invocation


def torchrun_launch(environ: dict[str, str] | None = None) -> Launch | None:
    """The torchrun environment of this process, or None when it was not started by torchrun."""
    env = os.environ if environ is None else environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    try:
        return Launch(
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env.get("LOCAL_RANK", "0")),
            restart_count=int(env.get("TORCHELASTIC_RESTART_COUNT", "0")),
            run_id=env.get("TORCHELASTIC_RUN_ID", ""),
        )
    except ValueError as exc:
        raise TrainingError(f"torchrun's environment is malformed: {exc}") from None


def rank_device(device: torch.device, launch: Launch | None) -> torch.device:
    """Each rank trains on its own GPU (``cuda:LOCAL_RANK``); CPU ranks share the CPU."""
    if launch is None or launch.world_size == 1 or device.type != "cuda":
        return device
    if launch.local_rank >= torch.cuda.device_count():
        raise TrainingError(
            f"rank {launch.rank} has local rank {launch.local_rank}, but this node has "
            f"{torch.cuda.device_count()} CUDA devices: start at most that many processes per node"
        )
    return torch.device("cuda", launch.local_rank)


def process_group_timeout() -> timedelta:
    """How long a collective waits for a silent rank (``SFSPEC_DIST_TIMEOUT`` seconds, default 300)."""
    raw = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(raw)
    except ValueError:
        raise TrainingError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    if seconds <= 0:
        raise TrainingError(f"{TIMEOUT_ENV}={raw!r} must be positive")
    return timedelta(seconds=seconds)


class NoComm:
    """The communicator of a single process: nothing to reduce, nothing to wait for."""

    rank = 0
    world_size = 1
    active = False  # algorithms test this before building anything to reduce

    def all_reduce_sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, in place."""
        return tensor

    def all_gather_rows(self, row: torch.Tensor) -> torch.Tensor:
        """Every rank's 1-D ``row``, stacked in rank order: (world_size, k)."""
        return row.unsqueeze(0)

    def average_gradients(self, params: Sequence[nn.Parameter]) -> None:
        """Mean of the gradients over ranks (in place)."""

    def broadcast_module_(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers, copied into every rank's module."""

    def broadcast_bytes(self, data: bytes | None) -> bytes:
        """Rank 0's ``data`` on every rank."""
        return data if data is not None else b""

    def gather_bytes(self, data: bytes) -> list[bytes] | None:
        """Every rank's ``data`` in rank order on rank 0 (None elsewhere)."""
        return [data]

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any."""
        return flag


class Comm(NoComm):
    """The communicator of one rank of a torch.distributed process group (already initialised)."""

    active = True

    def __init__(self, rank: int, world_size: int, device: torch.device):
        self.rank, self.world_size = rank, world_size
        # NCCL reduces CUDA tensors only; gloo reduces CPU tensors.
        self.device = device if device.type == "cuda" else torch.device("cpu")

    def all_reduce_sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, in place."""
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def all_gather_rows(self, row: torch.Tensor) -> torch.Tensor:
        """Every rank's 1-D ``row`` in rank order, as one all-reduce of a zero-padded (world_size, k) table."""
        table = torch.zeros(self.world_size, row.numel(), dtype=row.dtype, device=row.device)
        table[self.rank] = row
        return self.all_reduce_sum_(table)

    def average_gradients(self, params: Sequence[nn.Parameter]) -> None:
        """One flattened all-reduce of every gradient (a missing gradient counts as zeros), then / world_size."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.all_reduce_sum_(flat).div_(self.world_size)
        for p, g, part in zip(params, grads, flat.split([g.numel() for g in grads])):
            if p.grad is None:
                p.grad = g
            p.grad.copy_(part.view_as(g))

    def broadcast_module_(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers (the normalisers' statistics too), in one flat broadcast per dtype."""
        import torch.distributed as dist

        tensors = [t for t in (*module.parameters(), *module.buffers()) if t.numel()]
        for dtype in sorted({t.dtype for t in tensors}, key=str):
            group = [t for t in tensors if t.dtype == dtype]
            flat = torch.cat([t.detach().reshape(-1) for t in group])
            dist.broadcast(flat, src=0)
            with torch.no_grad():
                for t, part in zip(group, flat.split([t.numel() for t in group])):
                    t.copy_(part.view_as(t))

    def broadcast_bytes(self, data: bytes | None) -> bytes:
        """Rank 0's ``data`` on every rank (raw bytes: nothing is unpickled on the way)."""
        import torch.distributed as dist

        size = torch.tensor([len(data) if self.rank == 0 and data is not None else 0], device=self.device)
        dist.broadcast(size, src=0)
        if self.rank == 0:
            buffer = torch.frombuffer(bytearray(data or b"\0"), dtype=torch.uint8).to(self.device)
        else:
            buffer = torch.empty(max(1, int(size.item())), dtype=torch.uint8, device=self.device)
        dist.broadcast(buffer, src=0)
        return bytes(buffer.cpu().numpy()[: int(size.item())])

    def gather_bytes(self, data: bytes) -> list[bytes] | None:
        """Every rank's ``data`` in rank order on rank 0 (None elsewhere); sizes differ, so they are padded."""
        import torch.distributed as dist

        sizes = [
            int(n) for n in self.all_gather_rows(torch.tensor([len(data)], device=self.device)).reshape(-1).tolist()
        ]
        buffer = torch.zeros(max(1, *sizes), dtype=torch.uint8)
        if data:
            buffer[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        buffer = buffer.to(self.device)
        parts = [torch.empty_like(buffer) for _ in range(self.world_size)] if self.rank == 0 else None
        dist.gather(buffer, parts, dst=0)
        if self.rank != 0:
            return None
        return [bytes(p.cpu().numpy()[:n]) for p, n in zip(parts, sizes)]

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any (one small all-reduce)."""
        return bool(self.all_reduce_sum_(torch.tensor([float(flag)], device=self.device)).item())


@contextmanager
def open_communicator(launch: Launch | None, device: torch.device) -> Iterator[NoComm]:
    """The process group for this torchrun job (destroyed on the way out), or ``NoComm`` for one process."""
    if launch is None or launch.world_size == 1:
        yield NoComm()
        return
    import torch.distributed as dist

    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        dist.init_process_group(
            backend,
            timeout=process_group_timeout(),
            device_id=device if backend == "nccl" else None,
            **_restart_store(launch),
        )
    except Exception as exc:  # a rendezvous that never completes, a port in use
        raise TrainingError(f"rank {launch.rank}: cannot join the process group ({backend}): {exc}") from None
    try:
        yield Comm(launch.rank, launch.world_size, device)
    finally:
        dist.destroy_process_group()


def _restart_store(launch: Launch) -> dict:
    """After a torchrun restart, the process group's keys under a prefix of their own.

    torchrun's agent keeps its store across restarts, and gloo would read the addresses the
    previous attempt's (dead) ranks published there: connection refused. A prefix per attempt
    keeps the attempts apart.
    """
    if launch.restart_count == 0 or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return {}
    import torch.distributed as dist

    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        launch.world_size,
        is_master=False,
        timeout=process_group_timeout(),
    )
    prefixed = dist.PrefixStore(f"sfspec/attempt_{launch.restart_count}", store)
    return {"store": prefixed, "rank": launch.rank, "world_size": launch.world_size}


def to_bytes(obj: object) -> bytes:
    """``torch.save`` into memory (what ranks send each other: read back with ``weights_only=True``)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def from_bytes(data: bytes, map_location: torch.device | str = "cpu") -> object:
    """The inverse of ``to_bytes``; tensors and plain containers only (no code runs)."""
    return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)


def merge_moments(parts: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Chan's parallel merge of per-rank (count, mean, var) rows, in rank order: every rank computes the same.

    ``parts``: (world_size, 1 + 2 * width) float64 rows ``[count, mean..., var...]``.
    Returns the count, mean and (population) variance of all the ranks' samples together.
    """
    count, mean, m2 = parts[0, 0], parts[0, 1 : 1 + width], parts[0, 1 + width :] * parts[0, 0]
    for row in parts[1:]:
        n, row_mean, row_m2 = row[0], row[1 : 1 + width], row[1 + width :] * row[0]
        total = count + n
        delta = row_mean - mean
        mean = mean + delta * (n / total.clamp(min=1))
        m2 = m2 + row_m2 + delta.pow(2) * count * n / total.clamp(min=1)
        count = total
    return count, mean, m2 / count.clamp(min=1)


def fold_moments(rms: nn.Module, count: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> None:
    """Fold a batch's moments into a running mean/std (as ``RunningMeanStd.update`` folds a batch)."""
    rms.fold(count, mean, var)


def moments_row(rms: nn.Module) -> torch.Tensor:
    """A running mean/std's (count, mean, var) as one float64 row (for ``merge_moments``)."""
    return torch.cat([rms.count.reshape(1), rms.mean.reshape(-1), rms.var.reshape(-1)]).to(torch.float64)


def record_failure(exc: BaseException) -> None:
    """Write the error where torchrun's summary reads it (its error file), so the job's report names it.

    The file holds the error's message alone, not the traceback of the collective that broke: the
    summary then says why in one line, even for a rank that torchrun kills before it can print.
    """
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    message = f"{type(exc).__name__}: {exc}"
    data = {"message": {"message": message, "extraInfo": {"py_callstack": message, "timestamp": str(int(time.time()))}}}
    try:
        atomic_write_text(Path(path), json.dumps(data))
    except OSError:  # reporting must never hide the error itself
        pass
