"""The teacher-store step of a run: build the configured teachers once, fill their stores, hand back readers.

Distillation then reads the store only (:class:`~vfss_agglo_bundle.data.transforms.LoadTeacherFeaturesd`), so
no teacher is loaded during training; these helpers also give what the rest of stage 1 needs from the stores
(the adaptor head shapes, the shared view strength, the teacher signatures) without loading a teacher.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from vfss_agglo_bundle.data.datalist import frame_key, load_datalist, spaced_frames
from vfss_agglo_bundle.data.feature_store import TeacherFeatureReader
from vfss_agglo_bundle.data.transforms import LoadVFSSFramed
from vfss_agglo_bundle.teachers.registry import build_teachers
from vfss_agglo_bundle.teachers.store import open_stores
from vfss_agglo_bundle.utils.distributed import (
    every_process_succeeds,
    is_main_process,
    main_process_first,
    process_share,
)

__all__ = ["fill_teacher_stores", "head_shapes", "prepare_teacher_store", "signatures", "view_strength"]

logger = logging.getLogger(__name__)


def prepare_teacher_store(
    teachers: Sequence[str],
    datalist_file: str | os.PathLike,
    tasks: Sequence[str],
    cache_dir: str | os.PathLike,
    image_size: int,
    teacher_dir: str | os.PathLike | None = None,
    preset: str = "full",
    views: int = 1,
    grid: int | Sequence[int] | None = None,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    extra_items: Sequence[Mapping] = (),
    frames_per_study: int | None = None,
) -> dict[str, TeacherFeatureReader]:
    """Fill (or resume, or just check) the feature store of every teacher over the training split (and
    ``extra_items``, e.g. unlabelled frames, :func:`~vfss_agglo_bundle.data.sources.unlabelled_items`).

    Args:
        teachers: teacher names (``[]``: the from-scratch baseline, nothing to store).
        datalist_file, tasks: the datalist and its task list; its ``training`` split is stored.
        cache_dir: root of the stores.
        image_size: side S of the canonical image the teachers see.
        teacher_dir, preset: where the weights are, ``full`` or ``tiny`` (see the registry).
        views, grid, batch_size, device: as :func:`~vfss_agglo_bundle.teachers.store.fill_store` (one process of
            the same fill).
        extra_items: more frames to store (items with ``image``, ``study`` and ``frame``).
        frames_per_study: store only this many evenly spaced frames of each training study
            (:func:`~vfss_agglo_bundle.data.datalist.spaced_frames`; ``None``: all).

    Teachers are built only here and released afterwards (:func:`fill_teacher_stores`). Returns one reader per
    teacher.
    """
    if not teachers:
        logger.info("teacher store: no teachers configured (from-scratch baseline), nothing to cache")
        return {}
    items = spaced_frames(load_datalist(datalist_file, "training", tasks), frames_per_study) + list(extra_items)
    logger.info(
        "teacher store: %s over %d frames (%d training, %d unlabelled) x %d views in %s",
        list(teachers), len(items), len(items) - len(extra_items), len(extra_items), views, cache_dir,
    )  # fmt: skip
    return fill_teacher_stores(
        teachers, items, cache_dir, image_size, teacher_dir, preset, views, grid, batch_size, device
    )


def fill_teacher_stores(
    teachers: Sequence[str],
    items: Sequence[Mapping],
    cache_dir: str | os.PathLike,
    image_size: int,
    teacher_dir: str | os.PathLike | None = None,
    preset: str = "full",
    views: int = 1,
    grid: int | Sequence[int] | Mapping[str, Any] | None = None,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
) -> dict[str, TeacherFeatureReader]:
    """Build the teachers and fill (or resume) their stores for ``items``, shared by every process of a torchrun job.

    Rank 0 builds first (it checks the weights, joins packaged ones and writes each store's ``meta.json``), then the
    other ranks; each rank fills its own share of the (teacher, frame, view) entries
    (:func:`~vfss_agglo_bundle.utils.distributed.process_share`: every ``world``-th frame, all its views), one file per
    entry, and all wait until every share is done; a rank that fails while building or filling stops the others with
    an error. With one process it fills everything, exactly as before. With ``batch_size`` 1 the entries are
    byte-identical to a one-process fill at the same threads per process (larger batches group entries differently
    between the ranks, which changes float rounding). Arguments as :func:`prepare_teacher_store`.

    Raises:
        RuntimeError: another rank failed, or an entry is still missing after every share was filled.
    """
    loader = LoadVFSSFramed(keys=("image",), image_size=image_size)
    with every_process_succeeds("building the teachers"), main_process_first("building the teachers"):
        stores = open_stores(build_teachers(list(teachers), teacher_dir, preset), cache_dir, views, grid)
    share = process_share()
    with every_process_succeeds("filling the teacher store"):
        for store in stores.values():
            store.fill(
                items,
                lambda item: loader(item)["image"],
                batch_size=batch_size,
                device=device,
                progress=is_main_process(),
                share=share,
            )
    readers = {name: store.reader() for name, store in stores.items()}
    del stores  # and with them the teachers
    for reader in readers.values():
        missing = reader.missing([frame_key(item) for item in items], views)
        if missing:
            raise RuntimeError(
                f"teacher store {reader.directory}: {len(missing)} of {len(items) * views} entries are missing after "
                f"the fill (e.g. {missing[0]}); run again to fill them."
            )
    return readers


def head_shapes(readers: Mapping[str, TeacherFeatureReader]) -> dict[str, tuple[int, tuple[int, int], int | None]]:
    """Teacher name -> ``(dense_dim, stored grid (h, w), summary_dim or None)``: what its adaptor heads predict, read
    from its store (no teacher loaded; ``networks.adaptors.DistillationModel``'s ``heads``)."""
    return {name: (reader.dense_dim, reader.grid, reader.summary_dim) for name, reader in readers.items()}


def signatures(readers: Mapping[str, TeacherFeatureReader]) -> dict[str, str]:
    """Teacher name -> the signature of the teacher whose features the store holds."""
    return {name: reader.signature for name, reader in readers.items()}


def view_strength(readers: Mapping[str, TeacherFeatureReader]) -> dict[str, Any]:
    """The view strength shared by all stores (they must agree, since one image feeds every head)."""
    strengths = {name: r.view_strength for name, r in readers.items()}
    unique = {repr(sorted(s.items())) for s in strengths.values()}
    if len(unique) > 1:
        raise ValueError(f"teacher stores were filled with different view strengths {strengths}; refill them alike.")
    return next(iter(strengths.values()), {})
