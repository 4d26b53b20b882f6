"""Several training processes on torch's distributed engine (``torchrun``).

``torchrun --nproc_per_node N -m proxytasks train ...`` starts N copies of the command
with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set;
:func:`context` joins them into one process group (gloo on CPU, nccl on CUDA). Without
those variables it is a single process and every helper here is a no-op, so the same
code path serves both.

How :func:`proxytasks.train.train` divides the work:

- trunk features: each rank computes a contiguous block of the faces (:func:`block`) and
  the blocks are gathered, in rank order, on every rank;
- each step: every rank draws the same batch (batches are seeded by the step) and keeps
  its share of the loss terms (pairs ``k`` with ``k % world == rank``, normalised by the
  whole batch's weight), so that the sum of the ranks' losses is the one-process loss;
  DDP sums the gradients (each rank scales by ``world`` against DDP's mean), and the
  parameters stay equal on every rank, up to the order of float additions;
- the time budget and the feature views are decided by rank 0 and broadcast;
- only rank 0 reads the feature cache and the checkpoint (broadcast to the others) and
  writes anything (cache, checkpoints, model, log).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .errors import ProxytasksError

logger = logging.getLogger(__name__)

ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Context:
    """This process's place among the ranks (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    started: bool = False  # this module created the process group (and ends it in finish())

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def shard(self) -> tuple[int, int] | None:
        """(rank, world) for the losses, None for one process."""
        return (self.rank, self.world) if self.active else None


def context(device: str) -> Context:
    """Join the process group torchrun describes in the environment (``device``: the
    resolved torch device, which picks the backend); a one-process context without it."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return Context()
    missing = [k for k in ENV if not os.environ.get(k)]
    if missing:
        raise ProxytasksError(f"WORLD_SIZE={world} but {', '.join(missing)} not set: start several processes "
                              "with `torchrun --nproc_per_node N -m proxytasks train ...`")
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    cuda = torch.device(device).type == "cuda"
    started = False
    if not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        started = True
    if rank:
        logging.getLogger("proxytasks").setLevel(logging.WARNING)  # one rank reports
    logger.info("distributed training: %d processes (%s)", world, dist.get_backend())
    return Context(rank, world, local, started)


def local_device(device: str, ctx: Context) -> str:
    """The device of this rank: ``cuda:LOCAL_RANK`` for CUDA under torchrun."""
    if ctx.active and torch.device(device).type == "cuda":
        return f"cuda:{ctx.local_rank}"
    return device


def finish(ctx: Context) -> None:
    """End the process group if :func:`context` started it."""
    if ctx.started:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()


def block(n: int, ctx: Context) -> np.ndarray:
    """This rank's contiguous block of ``range(n)`` (the blocks in rank order cover it)."""
    return np.array_split(np.arange(n), ctx.world)[ctx.rank]


def broadcast(obj: Any, ctx: Context) -> Any:
    """Rank 0's ``obj`` on every rank (pickled; for small objects and arrays)."""
    if not ctx.active:
        return obj
    import torch.distributed as dist

    box = [obj if ctx.main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_rows(rows: np.ndarray, ctx: Context) -> np.ndarray:
    """Every rank's ``rows`` (same trailing shape and dtype), concatenated in rank order."""
    if not ctx.active:
        return rows
    import torch.distributed as dist

    sizes = [0] * ctx.world
    dist.all_gather_object(sizes, len(rows))
    top = max(sizes)
    pad = np.zeros((top,) + rows.shape[1:], dtype=rows.dtype)
    pad[:len(rows)] = rows
    # gloo has no float16 all_gather on every build: move the bytes as uint8
    flat = _on(torch.from_numpy(pad.view(np.uint8).reshape(top, -1).copy()))
    out = [torch.empty_like(flat) for _ in range(ctx.world)]
    dist.all_gather(out, flat)
    return np.concatenate([o.cpu().numpy()[:s].reshape(-1).view(rows.dtype).reshape((s,) + rows.shape[1:])
                           for o, s in zip(out, sizes)])


def _on(t: torch.Tensor) -> torch.Tensor:
    """``t`` where the backend can reduce it (nccl: this rank's GPU)."""
    import torch.distributed as dist

    return t.cuda() if dist.get_backend() == "nccl" else t


def any_rank(flag: bool, ctx: Context) -> bool:
    """True on every rank when ``flag`` is true on any."""
    if not ctx.active:
        return flag
    import torch.distributed as dist

    t = _on(torch.tensor([int(flag)]))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def total(value: float, ctx: Context) -> float:
    """The sum of ``value`` over the ranks."""
    if not ctx.active:
        return value
    import torch.distributed as dist

    t = _on(torch.tensor([float(value)], dtype=torch.float64))
    dist.all_reduce(t)
    return float(t.item())
