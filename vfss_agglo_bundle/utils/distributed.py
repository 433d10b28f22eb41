"""Rank helpers for torch.distributed runs (through ignite's ``idist``), and leaving such a run cleanly.

Every rank check in the package is :func:`is_main_process`; outside ``torchrun`` there is one process, rank 0.
"""

from __future__ import annotations

import gc
from typing import Any

import ignite.distributed as idist
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "barrier",
    "broadcast_from_main",
    "is_distributed",
    "is_main_process",
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
