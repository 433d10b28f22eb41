"""MONAI datalist JSON for VFSS: build, split by study, load and validate.

A datalist is ``{"tasks": [...], "image_size": S, "training": [...], "validation": [...], "test": [...]}``; each
item is ``{"image": "images/s000/0000.png", "label": "labels/s000/0000.nii.gz", "study": "s000", "frame": 0}``
with paths relative to the datalist's folder. Splits are made by study, never by frame: frames of one swallow
are nearly identical, so a frame-level split leaks.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from vfss_agglo_bundle.data.formats import read_frame, read_label
from vfss_agglo_bundle.utils.io import DataFormatError, PathLike, read_json

SPLITS: tuple[str, ...] = ("training", "validation", "test")


def frame_key(item: dict) -> str:
    """Unique, filesystem-safe key of a frame, used by caches: ``"s000/0000"``."""
    return f"{item['study']}/{int(item['frame']):04d}"


def split_studies(studies: Sequence[str], ratios: Sequence[float], seed: int = 0) -> dict[str, list[str]]:
    """Assign whole studies to the training/validation/test splits.

    Args:
        studies: study ids (order does not matter).
        ratios: fractions for training, validation, test (normalised to sum to 1).
        seed: shuffling seed.

    Counts are the ratios' shares of the studies rounded by largest remainder (16 studies at 9 : 3 : 4 give
    9 / 3 / 4); every split with a positive ratio gets at least one study when there are enough studies.
    """
    if len(ratios) != len(SPLITS) or min(ratios) < 0 or sum(ratios) <= 0:
        raise ValueError(f"ratios must be three non-negative numbers (training, validation, test), got {list(ratios)}.")
    ordered = sorted(set(studies))
    rng = np.random.default_rng(seed)
    rng.shuffle(ordered)
    fractions = np.asarray(ratios, dtype=float) / sum(ratios)
    quotas = fractions * len(ordered)
    counts = np.floor(quotas + 1e-9).astype(int)
    # largest remainder (Hamilton): the studies left over go to the largest fractional parts, then no wanted
    # split may stay empty
    for i in np.argsort(-(quotas - counts), kind="stable")[: len(ordered) - counts.sum()]:
        counts[i] += 1
    for i in range(len(SPLITS)):
        if fractions[i] > 0 and counts[i] == 0 and counts.max() > 1:
            counts[int(np.argmax(counts))] -= 1
            counts[i] = 1
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return {split: sorted(ordered[bounds[i] : bounds[i + 1]]) for i, split in enumerate(SPLITS)}


def build_datalist(
    items: Sequence[dict], tasks: Sequence[str], image_size: int, ratios: Sequence[float], seed: int = 0
) -> dict:
    """Group frame items into a datalist split by study.

    Args:
        items: frame items with ``image``, ``label`` (relative paths), ``study`` and ``frame``.
        tasks: task names, one per label channel.
        image_size: side of the stored frames.
        ratios: training/validation/test fractions of the studies.
        seed: split seed.
    """
    by_split = split_studies([it["study"] for it in items], ratios, seed)
    datalist: dict = {"tasks": list(tasks), "image_size": int(image_size)}
    for split, studies in by_split.items():
        chosen = set(studies)
        datalist[split] = sorted((it for it in items if it["study"] in chosen), key=frame_key)
    return datalist


def spaced_frames(items: Sequence[dict], per_study: int | None) -> list[dict]:
    """``per_study`` evenly spaced frames of each study of ``items`` (all of a shorter study; ``None``: every item).

    Frame ``floor((k + 0.5) * n / per_study)`` of a study's ``n`` ordered frames, ``k = 0 .. per_study - 1``: for 8
    frames and 2 a study, frames 2 and 6. Items keep their order.
    """
    if per_study is None:
        return list(items)
    if per_study < 1:
        raise ValueError(f"frames per study must be >= 1 or None (every frame), got {per_study}")
    by_study: dict[str, list[dict]] = {}
    for item in items:
        by_study.setdefault(item["study"], []).append(item)
    chosen = set()
    for frames in by_study.values():
        frames = sorted(frames, key=lambda it: it["frame"])
        n = len(frames)
        picks = range(n) if n <= per_study else {int((k + 0.5) * n / per_study) for k in range(per_study)}
        chosen.update(id(frames[i]) for i in picks)
    return [item for item in items if id(item) in chosen]


def study_fraction(items: Sequence[dict], fraction: float, seed: int = 0) -> list[dict]:
    """The items of ``round(fraction * n)`` (at least 1) of the ``n`` studies of ``items``, drawn with ``seed``.

    One seeded permutation of the sorted study names, cut at the front: for one seed, a smaller fraction's studies
    are part of every larger one's. ``fraction`` 1 keeps every item. Items keep their order.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"labelled_fraction must be in (0, 1], got {fraction}.")
    studies = sorted({item["study"] for item in items})
    if fraction == 1.0:
        return list(items)
    order = np.random.default_rng(seed).permutation(len(studies))
    keep = {studies[i] for i in order[: max(1, round(fraction * len(studies)))]}
    return [item for item in items if item["study"] in keep]


def load_datalist(path: PathLike, split: str, tasks: Sequence[str] | None = None) -> list[dict]:
    """Read one split of a datalist with ``image``/``label`` as absolute paths.

    Args:
        path: the datalist JSON.
        split: ``training``, ``validation`` or ``test``.
        tasks: the configured task list; a datalist recorded with other tasks is refused.
    """
    path = Path(path)
    datalist = read_json(path)
    if split not in datalist:
        raise KeyError(f"{path} has no {split!r} list (it has {sorted(k for k in datalist if k in SPLITS)}).")
    check_tasks(datalist, tasks, path)
    base = Path(os.path.abspath(path)).parent
    items = []
    for item in datalist[split]:
        item = dict(item)
        for key in ("image", "label"):
            if key in item:
                item[key] = str(base / item[key])
        items.append(item)
    return items


def task_channels(recorded: Sequence[str] | None, tasks: Sequence[str] | None, path: PathLike) -> list[int] | None:
    """Label channels of the configured ``tasks`` in a datalist recorded with ``recorded`` tasks.

    ``tasks`` may be any subset of the recorded names, in any order (a single-task specialist reads one channel);
    ``None`` when nothing needs selecting (the same list, or either unknown).

    Raises:
        ValueError: a configured task is not in the datalist.
    """
    if tasks is None or recorded is None or list(recorded) == list(tasks):
        return None
    missing = [t for t in tasks if t not in recorded]
    if missing:
        raise ValueError(
            f"{path} was built for tasks {list(recorded)} and has no task {missing}; set `tasks` in the config to "
            "names of the datalist's tasks (any subset, any order) or rebuild the datalist."
        )
    return [list(recorded).index(t) for t in tasks]


def check_tasks(datalist: dict, tasks: Sequence[str] | None, path: PathLike) -> None:
    """Raise if the configured ``tasks`` are not all among the datalist's recorded tasks."""
    task_channels(datalist.get("tasks"), tasks, path)


def label_channels(datalist_file: PathLike, tasks: Sequence[str]) -> list[int] | None:
    """The label channels to read for ``tasks`` (see :func:`task_channels`); ``None`` without a datalist yet."""
    if not Path(datalist_file).is_file():
        return None
    return task_channels(read_json(datalist_file).get("tasks"), tasks, datalist_file)


def validate_datalist(path: PathLike, tasks: Sequence[str] | None = None, check_files: bool = True) -> list[str]:
    """Check a datalist and return one line per problem (empty when it is usable).

    Checks: the JSON reads; splits exist and are not all empty; items have the required keys; no study is in two
    splits; files exist and load as 8-bit grey PNG and NIfTI; each label has one channel per task and the size of
    its frame; the frames of a study have one size (studies may differ: every frame is letterboxed to the canonical
    square when loaded).
    """
    path = Path(path)
    try:
        datalist = read_json(path)
    except (FileNotFoundError, DataFormatError) as e:
        return [str(e)]
    problems: list[str] = []
    recorded = datalist.get("tasks")
    if recorded is None:
        problems.append(f"{path}: no 'tasks' list; record the task names, one per label channel.")
    elif tasks is not None and any(t not in recorded for t in tasks):
        problems.append(f"{path}: tasks {recorded} lack the expected {[t for t in tasks if t not in recorded]}.")
    tasks = list(recorded if recorded is not None else tasks or [])
    if not any(datalist.get(split) for split in SPLITS):
        problems.append(f"{path}: every split ({', '.join(SPLITS)}) is empty or missing.")
    owner: dict[str, str] = {}
    frame_sizes: dict[str, tuple[Path, tuple[int, int], str]] = {}  # where -> (frame, its size, study)
    for split in SPLITS:
        for i, item in enumerate(datalist.get(split) or []):
            where = f"{path}: {split}[{i}]"
            missing = [k for k in ("image", "label", "study", "frame") if k not in item]
            if missing:
                problems.append(f"{where}: missing keys {missing}.")
                continue
            study = str(item["study"])
            if owner.setdefault(study, split) != split:
                problems.append(f"{where}: study {study!r} is in both {owner[study]!r} and {split!r}; split by study.")
            if not check_files:
                continue
            image_path, label_path = path.parent / item["image"], path.parent / item["label"]
            try:
                image = read_frame(image_path)
                label = read_label(label_path)
            except (FileNotFoundError, DataFormatError) as e:
                problems.append(f"{where}: {e}")
                continue
            frame_sizes[where] = (image_path, image.shape, study)
            if tasks and label.shape[0] != len(tasks):
                problems.append(
                    f"{where}: label {label_path} has {label.shape[0]} channels "
                    f"but there are {len(tasks)} tasks {tasks}."
                )
            if label.shape[1:] != image.shape:
                problems.append(
                    f"{where}: label {label_path} is {label.shape[1]}x{label.shape[2]} but its frame is "
                    f"{image.shape[0]}x{image.shape[1]}."
                )
    by_study: dict[str, dict[str, tuple[Path, tuple[int, int]]]] = {}
    for where, (image_path, size, study) in frame_sizes.items():
        by_study.setdefault(study, {})[where] = (image_path, size)
    for study, sizes in by_study.items():
        usual = Counter(size for _, size in sizes.values()).most_common(1)[0][0]
        problems += [
            f"{where}: frame {image_path} is {size[0]}x{size[1]} but the other frames of study {study!r} are "
            f"{usual[0]}x{usual[1]}; resize or re-export it."
            for where, (image_path, size) in sizes.items()
            if size != usual
        ]
    return problems
