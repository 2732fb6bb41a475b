"""What data-parallel PPO pays per update for its all-reduces, on CPU with gloo (2 ranks by default).

    python benchmarks/distributed.py [--ranks 2] [--repeats 200] [--hidden 64 256]

For an actor-critic MLP of each ``--hidden`` width (two layers each for actor and critic, CartPole-sized
input), it times, in alternation, per minibatch:

- ``flat``: what sfspec does (``Comm.average_gradients``): one all-reduce of all gradients concatenated;
- ``ddp``: DistributedDataParallel's bucketed all-reduce, overlapped with backward (backward+sync
  minus a plain backward of the same model);
- ``moments``: the minibatch's advantage moments (3 float64 values);

and per update the stats/flags gather, the normaliser merge and the stop flag. It prints medians
in microseconds and the all-reduce cost of one update of ``--epochs`` x ``--minibatches``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn


class _ActorCritic(nn.Module):
    """Two MLPs (actor, critic) on a CartPole-sized input, like the specs' default shape."""

    def __init__(self, hidden: int):
        super().__init__()

        def mlp(out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, out)
            )

        self.actor, self.critic = mlp(2), mlp(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.actor(x).square().mean() + self.critic(x).square().mean()


def _model(hidden: int) -> nn.Module:
    return _ActorCritic(hidden)


def _loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


def _timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from sfspec.runtime.distributed import Comm

    comm = Comm(rank, world, torch.device("cpu"))
    x = torch.randn(args.batch, 4)
    for hidden in args.hidden:
        medians = _measure(hidden, comm, x, args.repeats)
        if rank == 0:
            size = sum(p.numel() for p in _model(hidden).parameters())
            queue.put({"hidden": hidden, "parameters": size, **{f"{k}_us": round(v, 1) for k, v in medians.items()}})
    dist.destroy_process_group()


def _measure(hidden: int, comm, x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median microseconds of each contender for one model width, measured in alternation."""
    model = _model(hidden)
    params = list(model.parameters())
    ddp = nn.parallel.DistributedDataParallel(_model(hidden))
    samples: dict[str, list[float]] = {"flat": [], "ddp": [], "backward": [], "moments": [], "update_extras": []}

    def flat() -> None:
        model.zero_grad(set_to_none=True)
        _loss(model, x).backward()
        comm.average_gradients(params)

    def backward() -> None:
        model.zero_grad(set_to_none=True)
        _loss(model, x).backward()

    def moments() -> None:
        comm.all_reduce_sum_(torch.zeros(3, dtype=torch.float64))

    def extras() -> None:  # stats + flags gather, normaliser merge (4 inputs), stop flag
        comm.all_gather_rows(torch.zeros(10))
        comm.all_gather_rows(torch.zeros(9, dtype=torch.float64))
        comm.any(False)

    contenders = {"flat": flat, "backward": backward, "ddp": _ddp_backward(ddp, x), "moments": moments}
    contenders["update_extras"] = extras
    for _ in range(max(1, repeats // 10)):  # warm-up
        for fn in contenders.values():
            fn()
    for _ in range(repeats):  # alternate the contenders so load drifts hit all alike
        for name, fn in contenders.items():
            samples[name] += _timed(fn, 1)
    return {k: statistics.median(v) * 1e6 for k, v in samples.items()}


def _ddp_backward(ddp: nn.parallel.DistributedDataParallel, x: torch.Tensor):
    """Backward through DDP: its hooks all-reduce the gradient buckets during backward."""

    def run() -> None:
        ddp.zero_grad(set_to_none=True)
        ddp(x).backward()

    return run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    """Spawn the ranks, print one JSON line per model and the per-update cost."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--batch", type=int, default=512, help="samples per rank per minibatch")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--minibatches", type=int, default=4)
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.spawn(_worker, args=(args.ranks, _free_port(), args, queue), nprocs=args.ranks, join=True)
    while not queue.empty():
        row = queue.get()
        per_mb = row["flat_us"] - row["backward_us"] + row["moments_us"]
        row["ddp_sync_us"] = round(row["ddp_us"] - row["backward_us"], 1)
        row["flat_sync_us"] = round(row["flat_us"] - row["backward_us"], 1)
        row["allreduce_per_update_us"] = round(args.epochs * args.minibatches * per_mb + row["update_extras_us"], 1)
        row.update(ranks=args.ranks, threads=1, epochs=args.epochs, minibatches=args.minibatches, batch=args.batch)
        print(json.dumps(row))


if __name__ == "__main__":
    main()
