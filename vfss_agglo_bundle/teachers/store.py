"""Filling the teacher feature store: run each frozen teacher once over the frames and write what it gives.

The layout and the reader are in :mod:`vfss_agglo_bundle.data.feature_store`. Features are keyed by (teacher
signature, frame key, view). View ``v`` of frame ``k`` is the teacher run on
``apply_view(image, view_params(k, v, **view_strength))`` (see :mod:`vfss_agglo_bundle.data.views`); view 0 is
the unaugmented frame. The dense map may be average-pooled to a coarser grid to save disk. A store whose
``meta.json`` does not match the teacher (signature, grid, pooling, view strength) is refused, never reused.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor
from tqdm import tqdm
from vfss_agglo_bundle.data.datalist import frame_key
from vfss_agglo_bundle.data.feature_store import (
    FORMAT,
    FORMAT_VERSION,
    META_FILE,
    CorruptEntryError,
    TeacherFeatureReader,
    entry_digest,
    feature_path,
    read_entry,
    read_meta,
    store_directory,
)
from vfss_agglo_bundle.data.views import DEFAULT_VIEW_STRENGTH, apply_view, view_params
from vfss_agglo_bundle.teachers.base import Teacher
from vfss_agglo_bundle.utils.io import atomic_path, exclusive_lock, write_json

__all__ = ["TeacherFeatureStore", "fill_store", "open_stores", "stored_grid"]

logger = logging.getLogger(__name__)

GridSpec = int | Sequence[int] | None
# meta.json fields that must match for a store to be reused; "views" may grow.
COMPATIBLE_FIELDS = (
    "format",
    "version",
    "name",
    "signature",
    "dense_dim",
    "native_grid",
    "grid",
    "summary_dim",
    "pooling",
    "dtype",
    "view_strength",
)


def stored_grid(native: Sequence[int], grid: GridSpec) -> tuple[int, int]:
    """The grid to store: ``native`` when ``grid`` is None, else ``grid`` clipped to at most ``native`` per axis."""
    if grid is None:
        return (int(native[0]), int(native[1]))
    target = (int(grid), int(grid)) if isinstance(grid, int) else (int(grid[0]), int(grid[1]))
    if min(target) < 1:
        raise ValueError(f"grid must be positive, got {grid}.")
    return (min(target[0], int(native[0])), min(target[1], int(native[1])))


def _json_normal(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


class TeacherFeatureStore:
    """Writes one teacher's features for datalist items to disk (resumable).

    Args:
        root: cache root (``cache/teachers``); the store lives in ``<root>/<name>-<signature[:12]>``.
        teacher: the frozen teacher whose features are stored.
        views: number of views per frame (view 0 is the identity).
        grid: ``None`` keeps the teacher's native grid; an int or ``(h, w)`` average-pools the dense map down to
            at most that grid (a teacher already at or below it is kept native, per axis).
        view_strength: ``view_params`` keyword arguments (default ``DEFAULT_VIEW_STRENGTH``).

    Raises:
        ValueError: the folder holds a store whose ``meta.json`` does not match (other signature, grid,
            pooling or view strength).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        teacher: Teacher,
        views: int = 1,
        grid: GridSpec = None,
        view_strength: Mapping[str, Any] | None = None,
    ) -> None:
        if views < 1:
            raise ValueError(f"views must be >= 1, got {views}.")
        self.teacher = teacher
        self.views = int(views)
        self.grid = stored_grid(teacher.grid, grid)
        self.view_strength = _json_normal(dict(view_strength or DEFAULT_VIEW_STRENGTH))
        self.directory = store_directory(root, teacher.name, teacher.signature)
        self.meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "name": teacher.name,
            "signature": teacher.signature,
            "dense_dim": int(teacher.dense_dim),
            "native_grid": list(teacher.grid),
            "grid": list(self.grid),
            "summary_dim": teacher.summary_dim,
            "pooling": "none" if self.grid == tuple(teacher.grid) else "adaptive_avg",
            "dtype": "float16",
            "view_strength": self.view_strength,
            "views": self.views,
            "preprocessing": teacher.preprocessing,
            "layout": "<frame key>.v<view>.safetensors: dense [C,h,w] float16, summary [D] float16 if any",
        }
        self._open()

    def _open(self) -> None:
        meta_path = self.directory / META_FILE
        if meta_path.is_file():
            found = read_meta(self.directory)
            differ = [f for f in COMPATIBLE_FIELDS if found.get(f) != self.meta[f]]
            if differ:
                details = "; ".join(f"{f}: stored {found.get(f)!r}, wanted {self.meta[f]!r}" for f in differ)
                raise ValueError(
                    f"the teacher feature store {self.directory} does not match teacher {self.teacher.name!r} "
                    f"({details}). Use another cache directory, or delete {self.directory} to recompute it."
                )
            self.meta["views"] = max(self.views, int(found.get("views", 1)))
            if self.meta["views"] == found.get("views"):
                return
        write_json(meta_path, self.meta, overwrite=True)

    def path(self, key: str, view: int) -> Path:
        """File of (frame ``key``, ``view``)."""
        return feature_path(self.directory, key, view)

    def entries(self, items: Iterable[Mapping]) -> list[tuple[Mapping, str, int]]:
        """``(item, key, view)`` for every view of every item, in a fixed order (frames as given, then views)."""
        return [(item, key, view) for item in items for key in [frame_key(item)] for view in range(self.views)]

    def pending(self, items: Iterable[Mapping], share: tuple[int, int] = (0, 1)) -> list[tuple[Mapping, str, int]]:
        """The entries of ``share`` = ``(rank, world)`` that are not on disk yet, or are corrupt (their checksum fails:
        logged and recomputed): every view of every ``world``-th frame from ``rank`` (each rank decodes its frames
        once). Every stored entry of the share is read once to check it.

        Shares are cut from the full list of frames, not from what is missing, so they never overlap whatever each
        process finds on disk, and a fill resumes with any number of processes."""
        rank, world = share
        return [
            entry for entry in self.entries(list(items)[rank::world]) if not self._intact(self.path(entry[1], entry[2]))
        ]

    @staticmethod
    def _intact(path: Path) -> bool:
        if not path.is_file():
            return False
        try:
            read_entry(path)
        except CorruptEntryError as err:
            logger.warning("%s; recomputing it", err)
            return False
        return True

    def fill(
        self,
        items: Iterable[Mapping],
        image_loader: Callable[[Mapping], Tensor],
        batch_size: int = 1,
        device: str | torch.device = "cpu",
        progress: bool = True,
        share: tuple[int, int] = (0, 1),
    ) -> int:
        """Compute and write the missing (frame, view) features of ``share``; returns how many were written.

        Args:
            items: datalist items (need ``study`` and ``frame`` for the key, plus what ``image_loader`` reads).
            image_loader: item -> canonical image ``[1, S, S]`` float in [0, 1] (the training transforms).
            batch_size: views per teacher forward.
            device: where the teacher runs (the teacher is moved there).
            progress: show a tqdm bar.
            share: ``(rank, world)``: fill only every view of every ``world``-th frame from ``rank`` (``(0, 1)``:
                all), each entry written atomically to its own file, so several processes fill one store together.
                Two processes filling the same share (two runs starting at once) take turns: the second then finds
                the first one's entries.
        """
        with exclusive_lock(self.directory / f".filling-{share[0]}-of-{share[1]}.lock"):
            todo = self.pending(items, share)
            logger.info("teacher %s: %d views to compute in %s", self.teacher.name, len(todo), self.directory)
            if not todo:
                return 0
            self.teacher.to(device)
            cached: tuple[str, Tensor] | None = None
            with tqdm(total=len(todo), desc=f"teacher {self.teacher.name}", unit="view", disable=not progress) as bar:
                for start in range(0, len(todo), batch_size):
                    chunk = todo[start : start + batch_size]
                    images = []
                    for item, key, view in chunk:
                        if cached is None or cached[0] != key:
                            cached = (key, self._load(image_loader, item, key))
                        images.append(apply_view(cached[1], view_params(key, view, **self.view_strength)))
                    out = self.teacher(torch.stack(images).to(device))
                    dense = out.dense
                    if tuple(dense.shape[-2:]) != self.grid:
                        dense = F.adaptive_avg_pool2d(dense, self.grid)
                    for i, (_, key, view) in enumerate(chunk):
                        summary = None if out.summary is None else out.summary[i]
                        self._write(key, view, dense[i], summary)
                    bar.update(len(chunk))
            return len(todo)

    def _load(self, image_loader: Callable[[Mapping], Tensor], item: Mapping, key: str) -> Tensor:
        image = torch.as_tensor(image_loader(item)).float()
        if image.ndim != 3 or image.shape[0] != 1:
            raise ValueError(
                f"image_loader returned shape {tuple(image.shape)} for frame {key}; it must return the canonical "
                "grey image [1, S, S] in [0, 1]."
            )
        return image

    def _write(self, key: str, view: int, dense: Tensor, summary: Tensor | None) -> None:
        tensors = {"dense": dense.detach().to("cpu", torch.float16).contiguous()}
        if summary is not None:
            tensors["summary"] = summary.detach().to("cpu", torch.float16).contiguous()
        for name, tensor in tensors.items():
            if not torch.isfinite(tensor).all():
                raise ValueError(
                    f"teacher {self.teacher.name} gave non-finite {name} values for {key} view {view} after the "
                    "cast to float16 (overflow?); check the teacher and its input."
                )
        with atomic_path(self.path(key, view), overwrite=True, suffix=".safetensors") as tmp:
            save_file(tensors, str(tmp), metadata={"sha256": entry_digest(tensors)})

    def reader(self) -> TeacherFeatureReader:
        """A reader of this store."""
        return TeacherFeatureReader(self.directory.parent, self.teacher.name, self.teacher.signature)


def fill_store(
    models: Mapping[str, Teacher],
    items: Sequence[Mapping],
    root: str | os.PathLike,
    image_loader: Callable[[Mapping], Tensor],
    views: int = 1,
    grid: GridSpec | Mapping[str, GridSpec] = None,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    view_strength: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, TeacherFeatureReader]:
    """Fill (or resume) the store of every teacher for ``items`` in this process and return a reader per teacher
    (several processes: :func:`~vfss_agglo_bundle.teachers.prepare.prepare_teacher_store`).

    Args:
        models: teacher name -> frozen teacher.
        items: datalist items.
        root: cache root.
        image_loader: item -> canonical image ``[1, S, S]``.
        views: views per frame.
        grid: upper bound on the stored grid (see :class:`TeacherFeatureStore`), or a mapping name -> grid.
        batch_size: views per teacher forward.
        device: where teachers run.
        view_strength: ``view_params`` keyword arguments.
        progress: show tqdm bars.
    """
    readers = {}
    for name, store in open_stores(models, root, views, grid, view_strength).items():
        store.fill(items, image_loader, batch_size=batch_size, device=device, progress=progress)
        readers[name] = store.reader()
    return readers


def open_stores(
    models: Mapping[str, Teacher],
    root: str | os.PathLike,
    views: int = 1,
    grid: GridSpec | Mapping[str, GridSpec] = None,
    view_strength: Mapping[str, Any] | None = None,
) -> dict[str, TeacherFeatureStore]:
    """A :class:`TeacherFeatureStore` per teacher (``grid``: one bound for all, or a mapping name -> bound); writes
    each ``meta.json`` that is missing or must grow."""
    return {
        name: TeacherFeatureStore(
            root,
            teacher,
            views=views,
            grid=grid.get(name) if isinstance(grid, Mapping) else grid,
            view_strength=view_strength,
        )
        for name, teacher in models.items()
    }
