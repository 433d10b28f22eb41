"""Kinematics from masks already on disk: the bundle's NIfTI masks or another tool's one-PNG-per-structure export.

Layouts read (``<study>`` folders, or one flat folder for a single study):

- ``<root>/<study>/<frame>.nii.gz``: the bundle's label format (``inferring``'s ``masks/``, a dataset's
  ``labels/``), one channel per task;
- ``<root>/<study>/<pattern>`` with ``pattern`` such as ``{frame}_{task}.png`` (``inferring``'s ``masks_png/``,
  annotation-tool exports): one binary PNG per structure per frame; a missing file is an empty mask.

Frames are taken in the sorted order of their names; each is measured at its own size, after steadying (a majority
vote over a window of about ``steady_seconds``, :mod:`~vfss_agglo_bundle.kinematics.steadying`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm
from vfss_agglo_bundle.data.formats import read_label
from vfss_agglo_bundle.data.tasks import DEFAULT_TASKS
from vfss_agglo_bundle.kinematics.frame import FrameGeometry, frame_geometry
from vfss_agglo_bundle.kinematics.measures import analyse
from vfss_agglo_bundle.kinematics.outputs import write_kinematics
from vfss_agglo_bundle.kinematics.steadying import STEADY_SECONDS, steady_masks, steady_radius
from vfss_agglo_bundle.utils.io import DataFormatError, PathLike, natural_key

__all__ = ["DEFAULT_PATTERN", "mask_studies", "measure_folder", "read_mask_frames"]

logger = logging.getLogger(__name__)

DEFAULT_PATTERN = "{frame}_{task}.png"


def _pattern_regex(pattern: str, tasks: Sequence[str]) -> re.Pattern:
    if "{frame}" not in pattern or "{task}" not in pattern:
        raise ValueError(f"mask pattern {pattern!r} must contain {{frame}} and {{task}}, e.g. {DEFAULT_PATTERN!r}.")
    regex = re.escape(pattern).replace(re.escape("{frame}"), "(?P<frame>.+?)")
    regex = regex.replace(re.escape("{task}"), "(?P<task>" + "|".join(map(re.escape, tasks)) + ")")
    return re.compile(f"^{regex}$")


def mask_studies(root: PathLike) -> list[Path]:
    """The study folders under ``root`` (its sub-folders holding masks, or ``root`` itself)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"mask folder {root} does not exist.")
    studies = sorted(d for d in root.iterdir() if d.is_dir() and any(p.is_file() for p in d.iterdir()))
    return studies or [root]


def read_mask_frames(
    study_dir: PathLike, tasks: Sequence[str] = DEFAULT_TASKS, pattern: str = DEFAULT_PATTERN
) -> tuple[list[str], Iterator[np.ndarray]]:
    """The frame names of one study's masks and an iterator over their ``[K, H, W]`` uint8 masks (tasks order).

    Raises:
        FileNotFoundError: no NIfTI masks and no PNG matching ``pattern``.
        DataFormatError: a NIfTI with another number of channels than ``tasks``, or PNG masks of one frame with
            different sizes.
    """
    study_dir, tasks = Path(study_dir), list(tasks)
    niftis = sorted([*study_dir.glob("*.nii.gz"), *study_dir.glob("*.nii")], key=lambda p: natural_key(p.name))
    if niftis:

        def nifti_frames() -> Iterator[np.ndarray]:
            for path in niftis:
                masks = read_label(path)
                if masks.shape[0] != len(tasks):
                    raise DataFormatError(
                        f"{path} has {masks.shape[0]} channels but {len(tasks)} tasks were given ({tasks}); pass the "
                        "task list the masks were made with (--tasks)."
                    )
                yield masks

        return [p.name.split(".nii")[0] for p in niftis], nifti_frames()
    regex = _pattern_regex(pattern, tasks)
    files: dict[str, dict[str, Path]] = {}
    for path in sorted(study_dir.iterdir()):
        match = regex.match(path.name)
        if match:
            files.setdefault(match["frame"], {})[match["task"]] = path
    if not files:
        raise FileNotFoundError(
            f"no masks in {study_dir}: neither <frame>.nii.gz files nor PNGs named like {pattern!r} with tasks "
            f"{tasks}; pass --pattern to match your export's names."
        )
    names = sorted(files, key=natural_key)

    def png_frames() -> Iterator[np.ndarray]:
        for name in names:
            loaded = {}
            for task, path in files[name].items():
                with Image.open(path) as im:
                    loaded[task] = np.asarray(im.convert("L")) > 0
            shapes = {m.shape for m in loaded.values()}
            if len(shapes) > 1:
                raise DataFormatError(f"the masks of frame {name} in {study_dir} have different sizes {shapes}.")
            shape = shapes.pop()
            yield np.stack([loaded.get(t, np.zeros(shape, bool)) for t in tasks]).astype(np.uint8)

    return names, png_frames()


def measure_folder(
    masks: PathLike,
    out_dir: PathLike,
    fps: float | None = None,
    tasks: Sequence[str] = DEFAULT_TASKS,
    pattern: str = DEFAULT_PATTERN,
    mm_per_px: float | None = None,
    steady_seconds: float | None = STEADY_SECONDS,
) -> dict[str, dict[str, Any]]:
    """Measure every study under ``masks`` and write ``out_dir/<study>.csv``, ``.json`` and ``.png``.

    ``steady_seconds``: each study's masks are first steadied by a per-pixel majority vote over a centred window of
    about this many seconds (:func:`~vfss_agglo_bundle.kinematics.steadying.steady_radius`); 0 or ``None``: off (for
    ground-truth masks).

    Returns study -> the :func:`~vfss_agglo_bundle.kinematics.measures.analyse` result.
    """
    if fps is None:
        logger.warning("no frame rate given (--fps): kinematics times will be in frames, not seconds.")
    radius = steady_radius(fps, steady_seconds)
    results = {}
    for study_dir in mask_studies(masks):
        names, frames = read_mask_frames(study_dir, tasks, pattern)
        steady = tqdm(steady_masks(frames, radius), total=len(names), desc=study_dir.name, unit="frame")
        geometries: list[FrameGeometry] = [frame_geometry(m, tasks) for m in steady]
        result = analyse(geometries, tasks, fps, mm_per_px)
        result["frame_names"] = names
        write_kinematics(result, out_dir, study_dir.name)
        results[study_dir.name] = result
    return results
