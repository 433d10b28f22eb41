"""Data for stage 1: frames x stored views, the view applied to the student's image, and the teacher store step.

Distillation reads teacher targets from the feature store, so the student must see exactly the image the
teacher saw: item ``(frame, view)`` is loaded with the canonical loader and passed through
``apply_view(image, view_params(frame_key, view, **view_strength))``, the same call the store made.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.transforms import MapTransform

from vfss_agglo_bundle.data.datalist import frame_key, load_datalist
from vfss_agglo_bundle.data.transforms import LoadVFSSFramed
from vfss_agglo_bundle.data.views import apply_view, view_params
from vfss_agglo_bundle.networks.adaptors import TeacherSpec
from vfss_agglo_bundle.teachers.registry import build_teachers
from vfss_agglo_bundle.teachers.store import TeacherFeatureReader, fill_store

logger = logging.getLogger("vfss_agglo")


def view_items(items: Sequence[Mapping], views: int) -> list[dict]:
    """Repeat each datalist item once per view, adding ``frame_key`` and ``view``."""
    return [{**item, "frame_key": frame_key(item), "view": v} for item in items for v in range(views)]


class ApplyViewd(MapTransform):
    """Apply the stored view ``(d["frame_key"], d["view"])`` to ``[C, S, S]`` images under ``keys``.

    Args:
        keys: image keys.
        view_strength: ``view_params`` keyword arguments; must equal the store's (``reader.view_strength``).
    """

    def __init__(self, keys: Sequence[Hashable] = ("image",), view_strength: Mapping[str, Any] | None = None) -> None:
        super().__init__(keys)
        self.view_strength = dict(view_strength or {})

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        params = view_params(str(d["frame_key"]), int(d["view"]), **self.view_strength)
        for key in self.key_iterator(d):
            d[key] = apply_view(torch.as_tensor(d[key]), params)
        return d


def prepare_teacher_store(
    teachers: Sequence[str],
    teacher_dir: str | os.PathLike | None,
    preset: str,
    datalist_file: str | os.PathLike,
    tasks: Sequence[str],
    cache_dir: str | os.PathLike,
    image_size: int,
    views: int = 1,
    grid: int | Sequence[int] | None = None,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
) -> dict[str, TeacherFeatureReader]:
    """Fill (or resume, or just check) the feature store of every teacher over the training split.

    Teachers are built only here and released afterwards: distillation itself reads the store. Returns one reader
    per teacher (empty when ``teachers`` is empty: the from-scratch baseline).
    """
    if not teachers:
        logger.info("teacher store: no teachers configured (from-scratch baseline), nothing to cache")
        return {}
    items = load_datalist(datalist_file, "training", tasks)
    models = build_teachers(list(teachers), teacher_dir, preset)
    loader = LoadVFSSFramed(keys=("image",), image_size=image_size)
    logger.info(
        "teacher store: %s over %d training frames x %d views in %s", list(teachers), len(items), views, cache_dir
    )
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


def teacher_specs(readers: Mapping[str, TeacherFeatureReader]) -> dict[str, TeacherSpec]:
    """The adaptor head shapes of each stored teacher, read from its store (no teacher loaded)."""
    return {name: TeacherSpec(r.dense_dim, r.grid, r.summary_dim) for name, r in readers.items()}


def view_strength(readers: Mapping[str, TeacherFeatureReader]) -> dict[str, Any]:
    """The view strength shared by all stores (they must agree, since one image feeds every head)."""
    strengths = {name: r.view_strength for name, r in readers.items()}
    unique = {repr(sorted(s.items())) for s in strengths.values()}
    if len(unique) > 1:
        raise ValueError(f"teacher stores were filled with different view strengths {strengths}; refill them alike.")
    return next(iter(strengths.values()), {})
