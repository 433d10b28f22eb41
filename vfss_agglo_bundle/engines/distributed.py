"""Leaving a torch.distributed run cleanly."""

from __future__ import annotations

import gc

import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

__all__ = ["shutdown_distributed"]


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
