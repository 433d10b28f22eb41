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
from vfss_agglo_bundle.data.datalist import load_datalist, spaced_frames
from vfss_agglo_bundle.data.feature_store import TeacherFeatureReader
from vfss_agglo_bundle.data.transforms import LoadVFSSFramed
from vfss_agglo_bundle.teachers.registry import build_teachers
from vfss_agglo_bundle.teachers.store import fill_store
from vfss_agglo_bundle.utils.distributed import main_process_first

__all__ = ["head_shapes", "prepare_teacher_store", "signatures", "view_strength"]

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
        views, grid, batch_size, device: as :func:`~vfss_agglo_bundle.teachers.store.fill_store`.
        extra_items: more frames to store (items with ``image``, ``study`` and ``frame``).
        frames_per_study: store only this many evenly spaced frames of each training study
            (:func:`~vfss_agglo_bundle.data.datalist.spaced_frames`; ``None``: all).

    Teachers are built only here and released afterwards. Returns one reader per teacher.
    """
    if not teachers:
        logger.info("teacher store: no teachers configured (from-scratch baseline), nothing to cache")
        return {}
    items = spaced_frames(load_datalist(datalist_file, "training", tasks), frames_per_study) + list(extra_items)
    loader = LoadVFSSFramed(keys=("image",), image_size=image_size)
    logger.info(
        "teacher store: %s over %d frames (%d training, %d unlabelled) x %d views in %s",
        list(teachers), len(items), len(items) - len(extra_items), len(extra_items), views, cache_dir,
    )  # fmt: skip
    with main_process_first("filling the teacher store"):  # under torchrun: rank 0 fills it, the others find it
        models = build_teachers(list(teachers), teacher_dir, preset)
        readers = fill_store(
            models,
            items,
            cache_dir,
            lambda item: loader(item)["image"],
            views=views,
            grid=grid,
            batch_size=batch_size,
            device=device,
        )
        del models
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
