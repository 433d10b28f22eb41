"""Bring user data into the bundle's on-disk format and check it: per-structure mask exports become a dataset
(:func:`import_mask_folder`), an existing dataset is checked before a run uses it (:func:`check_dataset`), and a
contact sheet previews a datalist (:func:`preview_datalist`).

Writers refuse to overwrite an existing dataset or datalist (delete it, or choose another folder).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm
from vfss_agglo_bundle.data.datalist import build_datalist, check_tasks, load_datalist, validate_datalist
from vfss_agglo_bundle.data.formats import (
    IMAGE_EXTENSIONS,
    read_frame,
    read_label,
    to_grey_uint8,
    write_frame,
    write_label,
)
from vfss_agglo_bundle.data.tasks import DEFAULT_TASKS
from vfss_agglo_bundle.utils.io import DataFormatError, PathLike, read_json, write_json
from vfss_agglo_bundle.visualize import contact_sheet, legend, overlay, save_png

logger = logging.getLogger(__name__)

DATALIST_NAME = "datalist.json"
MAX_PROBLEMS_SHOWN = 10  # in the error check_dataset raises; `prepare_data.py validate` lists them all


def frame_paths(study: str, frame: int) -> tuple[str, str]:
    """Where a dataset keeps a study's frame and its label, relative to the dataset's folder: (image, label)."""
    return f"images/{study}/{frame:04d}.png", f"labels/{study}/{frame:04d}.nii.gz"


def _load_grey(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return to_grey_uint8(np.array(im))
    except OSError as e:
        raise DataFormatError(f"{path} cannot be read as an image ({e}).") from e


def import_mask_folder(
    src: PathLike,
    out_dir: PathLike,
    tasks: Sequence[str] = DEFAULT_TASKS,
    frames_dir: str = "frames",
    masks_dir: str = "masks",
    mask_pattern: str = "{frame}_{task}.png",
    image_size: int | None = None,
    ratios: Sequence[float] = (9, 3, 4),
    seed: int = 0,
) -> Path:
    """Convert an annotation-tool export (one mask PNG per structure per frame) into the bundle format.

    Expected layout: ``src/<study>/<frames_dir>/<frame>.png`` and ``src/<study>/<masks_dir>/<mask_pattern>``
    (``{frame}`` = the frame file's stem, ``{task}`` = task name). A missing mask file means the structure is
    absent in that frame (e.g. no bolus yet). Colour or 16-bit frames are converted to 8-bit grey; with
    ``image_size`` frames and masks are resized to ``image_size`` squared. Returns the datalist path.
    """
    src, out_dir = Path(src), Path(out_dir)
    datalist_path = out_dir / DATALIST_NAME
    if datalist_path.exists():
        raise FileExistsError(f"{datalist_path} already exists; delete {out_dir} or choose another folder.")
    study_dirs = sorted(d for d in src.iterdir() if (d / frames_dir).is_dir()) if src.is_dir() else []
    if not study_dirs:
        raise FileNotFoundError(f"no study folders with a '{frames_dir}/' subfolder under {src}.")
    items, empty_masks, size = [], 0, None
    for study_dir in tqdm(study_dirs, desc="import studies", unit="study"):
        frame_files = sorted(p for p in (study_dir / frames_dir).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        for index, frame_file in enumerate(frame_files):
            image = _load_grey(frame_file)
            masks = []
            for task in tasks:
                mask_file = study_dir / masks_dir / mask_pattern.format(frame=frame_file.stem, task=task)
                if mask_file.exists():
                    mask = _load_grey(mask_file) > 0
                    if mask.shape != image.shape:
                        raise DataFormatError(
                            f"mask {mask_file} is {mask.shape[0]}x{mask.shape[1]} but frame {frame_file} is "
                            f"{image.shape[0]}x{image.shape[1]}."
                        )
                else:
                    mask = np.zeros(image.shape, dtype=bool)
                    empty_masks += 1
                masks.append(mask)
            label = np.stack(masks).astype(np.uint8)
            if image_size is not None:
                image = np.asarray(Image.fromarray(image).resize((image_size, image_size), Image.BILINEAR))
                label = np.stack(
                    [
                        np.asarray(Image.fromarray(m * 255).resize((image_size, image_size), Image.NEAREST)) > 0
                        for m in label
                    ]
                ).astype(np.uint8)
            if size is None:
                size = image.shape
            elif image.shape != size:
                raise DataFormatError(
                    f"frame {frame_file} is {image.shape[0]}x{image.shape[1]} "
                    f"but earlier frames are {size[0]}x{size[1]}; "
                    "pass image_size to resize all frames."
                )
            im, lb = frame_paths(study_dir.name, index)
            write_frame(out_dir / im, image)
            write_label(out_dir / lb, label)
            items.append({"image": im, "label": lb, "study": study_dir.name, "frame": index, "source": str(frame_file)})
    logger.info(
        "imported %d frames from %d studies (%d absent structure masks)", len(items), len(study_dirs), empty_masks
    )
    datalist = build_datalist(items, tasks, size[0], ratios, seed)
    write_json(datalist_path, datalist)
    return datalist_path


def preview_datalist(
    datalist: PathLike,
    out: PathLike,
    split: str = "training",
    num: int = 12,
    cols: int = 4,
    study: str | None = None,
    one_per_study: bool = False,
) -> Path:
    """Save a contact sheet of frames with coloured label overlays and a task legend; returns its path.

    ``split``: a split of the datalist or ``all``; ``one_per_study``: the middle frame of each of the first ``num``
    studies instead of ``num`` frames evenly spread over the split."""
    tasks = read_json(datalist).get("tasks") or list(DEFAULT_TASKS)
    splits = ("training", "validation", "test") if split == "all" else (split,)
    items = [it for name in splits for it in load_datalist(datalist, name)]
    if study is not None:
        items = [it for it in items if it["study"] == study]
    if not items:
        raise ValueError(f"{datalist}: no {split!r} frames{f' of study {study!r}' if study else ''} to preview.")
    if one_per_study:
        by_study: dict[str, list[dict]] = {}
        for it in items:
            by_study.setdefault(it["study"], []).append(it)
        picks = [frames[len(frames) // 2] for frames in sorted(by_study.values(), key=lambda f: f[0]["study"])][:num]
    else:
        picks = [items[i] for i in np.linspace(0, len(items) - 1, min(num, len(items))).round().astype(int)]
    tiles = [overlay(read_frame(it["image"]), read_label(it["label"])) for it in picks]
    titles = [f"{it['study']} #{it['frame']}" for it in picks]
    sheet = contact_sheet(tiles, titles, cols)
    sheet = np.concatenate([sheet, legend(tasks, sheet.shape[1])])
    save_png(out, sheet, keep_old=True)
    return Path(out)


def check_dataset(datalist_path: PathLike, tasks: Sequence[str]) -> None:
    """Check an existing dataset before a run uses it: its task list against ``tasks`` and every frame and label it
    names (``validate_datalist``), so that bad input stops the run before any work is done.

    Raises:
        ValueError: the datalist was built for other tasks.
        DataFormatError: one error listing every problem found, each naming its file.
    """
    check_tasks(read_json(datalist_path), tasks, datalist_path)
    problems = validate_datalist(datalist_path, tasks)
    if problems:
        shown = "\n  ".join(problems[:MAX_PROBLEMS_SHOWN])
        hidden = len(problems) - MAX_PROBLEMS_SHOWN
        more = f"\n  ... and {hidden} more" if hidden > 0 else ""
        raise DataFormatError(
            f"{datalist_path} cannot be used, {len(problems)} problem(s):\n  {shown}{more}\n"
            f"Fix or re-import these files; `python scripts/prepare_data.py validate --datalist {datalist_path}` "
            "lists every problem."
        )
