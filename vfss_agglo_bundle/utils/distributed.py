"""Rank helpers for torch.distributed runs (through ignite's ``idist``): joining, ordering and leaving such a run.

Every rank check in the package is :func:`is_main_process`; outside ``torchrun`` there is one process, rank 0, and
every helper here does what a single process needs (nothing, for the ordering ones). ``configs/multi_gpu_train.yaml``
calls :func:`init_distributed` (with keyword arguments) and :func:`shutdown_distributed`; the steps that write shared
files (the phantom dataset, standardisation statistics, the teacher store's set-up) run under
:func:`main_process_first`; work that every rank shares (the teacher store's entries, :func:`process_share`) runs
under :func:`every_process_succeeds`; the configs' ``is_worker`` (``not is_main_process()``) disables the handlers
that only watch a run on other ranks.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
from collections.abc import Iterator
from typing import Any

import ignite.distributed as idist
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "barrier",
    "broadcast_from_main",
    "every_process_succeeds",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "main_process_first",
    "mean_over_ranks",
    "process_share",
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
def main_process_first(what: str = "this step") -> Iterator[None]:
    """Run the block on rank 0 while the other ranks wait, then on the other ranks (which find rank 0's files
    complete and write nothing). A plain block outside a distributed run.

    When rank 0's block raises, rank 0 still releases the others, and they stop with an error naming ``what``
    instead of doing the work themselves or waiting for the barrier's timeout.
    """
    if not is_distributed():
        yield
        return
    if not is_main_process():
        barrier()
        if not bool(idist.broadcast(torch.tensor(0), src=0)):
            raise RuntimeError(f"rank 0 failed in {what}; its error is in its log.")
        yield
        return
    succeeded = False
    try:
        yield
        succeeded = True
    finally:
        barrier()
        idist.broadcast(torch.tensor(int(succeeded)), src=0)


def process_share() -> tuple[int, int]:
    """``(rank, world size)``: this process takes entries ``rank, rank + world, ...`` of work split between ranks
    (``(0, 1)`` outside a distributed run)."""
    return idist.get_rank(), idist.get_world_size()


@contextlib.contextmanager
def every_process_succeeds(what: str = "this step") -> Iterator[None]:
    """Every rank runs the block (its own share of the work), then all wait for each other; when any rank's block
    raised, that rank re-raises its error and the others stop with an error naming ``what`` and the failed ranks,
    instead of going on with a share missing. A plain block outside a distributed run."""
    if not is_distributed():
        yield
        return
    succeeded = False
    try:
        yield
        succeeded = True
    finally:
        failed = idist.all_gather(torch.tensor([0 if succeeded else 1]))
    if succeeded and bool(failed.any()):
        ranks = [i for i, f in enumerate(failed.tolist()) if f]
        raise RuntimeError(f"rank(s) {ranks} failed in {what}; their errors are in their logs.")


def init_distributed(device: torch.device, timeout_minutes: float = 60.0) -> None:
    """Join the process group ``torchrun`` describes (environment variables), unless already joined: NCCL for a
    CUDA ``device`` (then made this process's current GPU), gloo on the CPU. ``timeout_minutes``: how long a rank
    waits at a barrier, e.g. for the slowest share of a large teacher store."""
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    if device.type == "cuda":
        torch.cuda.set_device(device)


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
