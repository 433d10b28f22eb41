"""Rank helpers for torch.distributed runs (through ignite's ``idist``): joining, ordering and leaving such a run.

Every rank check in the package is :func:`is_main_process`; outside ``torchrun`` there is one process, rank 0, and
every helper here does what a single process needs (nothing, for the ordering ones). ``configs/multi_gpu_train.yaml``
calls :func:`init_distributed`, :func:`handlers_of_rank` and :func:`shutdown_distributed` with keyword arguments;
the steps that write shared files (the phantom dataset, the teacher store) run under :func:`main_process_first`.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
from collections.abc import Iterator, Sequence
from typing import Any

import ignite.distributed as idist
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "barrier",
    "broadcast_from_main",
    "handlers_of_rank",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "main_process_first",
    "mean_over_ranks",
    "shutdown_distributed",
    "unwrap_ddp",
]


def is_distributed() -> bool:
    """True inside a process group of more than one rank."""
    return idist.get_world_size() > 1


def is_main_process() -> bool:
    """True on rank 0 (the rank that writes files), and in a run without torch.distributed."""
    return idist.get_rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op outside a distributed run)."""
    if is_distributed():
        idist.barrier()


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Run the block on rank 0 while the other ranks wait, then on the other ranks (which find rank 0's files
    complete and write nothing). A plain block outside a distributed run.

    Rank 0 releases the others even when its block raises, so they fail with their own error instead of waiting
    for the barrier's timeout.
    """
    if not is_main_process():
        barrier()
    try:
        yield
    finally:
        if is_main_process():
            barrier()


def init_distributed(device: torch.device, timeout_minutes: float = 60.0) -> None:
    """Join the process group ``torchrun`` describes (environment variables), unless already joined: NCCL for a
    CUDA ``device`` (then made this process's current GPU), gloo on the CPU. ``timeout_minutes``: how long a rank
    waits at a barrier, e.g. while rank 0 fills a large teacher store."""
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    if device.type == "cuda":
        torch.cuda.set_device(device)


def handlers_of_rank(handlers: Sequence[Any], main_process_only: Sequence[Any] = ()) -> list[Any]:
    """``handlers`` in their order, less those in ``main_process_only`` on every rank but rank 0 (progress bars,
    console and TensorBoard logs: one copy of each, written by rank 0). Handlers are matched by identity."""
    if is_main_process():
        return list(handlers)
    skipped = {id(h) for h in main_process_only}
    return [h for h in handlers if id(h) not in skipped]


def mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """Detached copy of ``x`` averaged over all ranks (just detached when not distributed)."""
    x = x.detach().clone()
    if is_distributed():
        x = idist.all_reduce(x) / idist.get_world_size()
    return x


def unwrap_ddp(obj: Any) -> Any:
    """The module inside a ``DistributedDataParallel`` wrapper; any other object as it is."""
    return obj.module if isinstance(obj, DistributedDataParallel) else obj


def broadcast_from_main(tensor: torch.Tensor) -> None:
    """Overwrite ``tensor`` in place with rank 0's values (no-op when not distributed)."""
    if is_distributed():
        tensor.copy_(idist.broadcast(tensor, src=0))


def shutdown_distributed() -> None:
    """Wait for every rank, destroy the default process group and free it while the interpreter is still alive.

    The bundle's config keeps its ``DistributedDataParallel`` wrappers (and through them the process group) until
    the process exits; a gloo group freed during interpreter shutdown can abort the process ("terminate called
    without an active exception"). So after ``destroy_process_group`` each live wrapper drops its reducer, logger
    and group. Does nothing when no process group is initialised.
    """
    if not dist.is_initialized():
        return
    dist.barrier()
    dist.destroy_process_group()
    for obj in gc.get_objects():
        if isinstance(obj, DistributedDataParallel):
            for name in ("reducer", "logger", "process_group"):
                obj.__dict__.pop(name, None)
    gc.collect()
