"""Precompute teacher features for a datalist into the teacher feature store (resumable).

    python scripts/cache_teachers.py --datalist data/phantom/datalist.json --teachers medsam,rad_dino \\
        --teacher_dir weights/ --cache_dir cache/teachers --views 2 --grid 32 --batch_size 4 --device cuda:0
    python scripts/cache_teachers.py --datalist data/phantom/datalist.json --teachers "['medsam','medclip']" \\
        --preset tiny

Re-running continues where an interrupted run stopped, with any number of processes. Several processes share the
work: each fills its own share of the entries (on GPUs, one process per GPU; on the CPU, e.g. 2 processes with 1
thread each)::

    torchrun --standalone --nproc_per_node=2 scripts/cache_teachers.py --datalist ... --device cuda --threads 1

Prints one line per teacher with its store folder and its size on disk per frame (all views).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import fire
import torch
from vfss_agglo_bundle.data.datalist import frame_key, load_datalist
from vfss_agglo_bundle.teachers.prepare import fill_teacher_stores
from vfss_agglo_bundle.utils.cli import split_names
from vfss_agglo_bundle.utils.distributed import init_distributed, is_main_process, shutdown_distributed
from vfss_agglo_bundle.utils.io import read_json


def cache(
    datalist: str,
    teachers: str | Sequence[str] = "medsam,rad_dino,medclip",
    teacher_dir: str | None = None,
    preset: str = "full",
    cache_dir: str = "cache/teachers",
    views: int = 1,
    grid: int | Sequence[int] | None = None,
    batch_size: int = 1,
    device: str = "cpu",
    splits: str | Sequence[str] = "training,validation",
    image_size: int | None = None,
    threads: int | None = None,
) -> None:
    """Fill the teacher feature store for the frames of ``splits`` and print bytes per frame per teacher.

    Under torchrun (``WORLD_SIZE`` set) the processes join one group (gloo on the CPU, NCCL with ``--device cuda``:
    each process on ``cuda:<LOCAL_RANK>``) and share the entries."""
    if threads:
        torch.set_num_threads(int(threads))
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        if device.startswith("cuda"):
            device = f"cuda:{os.environ['LOCAL_RANK']}"
        init_distributed(torch.device(device))
    size = int(image_size or read_json(datalist)["image_size"])
    items = [item for split in split_names(splits) for item in load_datalist(datalist, split)]
    readers = fill_teacher_stores(
        split_names(teachers), items, cache_dir, size, teacher_dir, preset, views, grid, batch_size, device
    )
    main = is_main_process()
    if distributed:
        shutdown_distributed()
    if not main:
        return
    keys = [frame_key(item) for item in items]
    print(f"{len(items)} frames x {views} views from {datalist} ({', '.join(split_names(splits))}), image size {size}")
    for name, reader in readers.items():
        stored = [reader.path(k, v).stat().st_size for k in keys for v in range(views)]
        per_frame = sum(stored) / max(len(keys), 1)
        print(
            f"{name:12s} {reader.directory}  dense {reader.dense_dim}x{reader.grid[0]}x{reader.grid[1]}  "
            f"summary {reader.summary_dim}  {per_frame / 1024:.1f} KiB/frame  {sum(stored) / 2**20:.1f} MiB total"
        )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    fire.Fire(cache)
