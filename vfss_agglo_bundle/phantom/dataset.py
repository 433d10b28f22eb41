"""A phantom dataset on disk, in the bundle's format: frames, labels, each study's ground-truth kinematics and the
datalist split by study (:func:`synthesize_dataset`); :func:`ensure_dataset` writes one where a run finds none.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm
from vfss_agglo_bundle.data.datalist import build_datalist, split_studies
from vfss_agglo_bundle.data.formats import write_frame, write_label
from vfss_agglo_bundle.data.prepare import DATALIST_NAME, check_dataset, frame_paths
from vfss_agglo_bundle.data.tasks import DEFAULT_TASKS
from vfss_agglo_bundle.phantom.anatomy import phantom_config
from vfss_agglo_bundle.phantom.render import simulate_study
from vfss_agglo_bundle.phantom.truth import study_truth
from vfss_agglo_bundle.utils.distributed import main_process_first
from vfss_agglo_bundle.utils.io import PathLike, exclusive_lock, read_json, write_json

__all__ = [
    "GENERATOR",
    "KINEMATICS_DIR",
    "check_phantom_settings",
    "ensure_dataset",
    "phantom_settings",
    "study_seed",
    "synthesize_dataset",
]

logger = logging.getLogger(__name__)

KINEMATICS_DIR = "kinematics"  # a phantom dataset's ground-truth kinematics, one JSON per study
GENERATOR = "vfss_agglo_bundle.phantom"  # a phantom datalist's source.generator
WRITING_LOCK = ".writing.lock"  # held while one process writes the dataset (others on the folder wait for it)


def study_seed(seed: int, study: int) -> int:
    """Seed of one phantom study, independent of how many studies are generated."""
    return int(np.random.SeedSequence([seed, study]).generate_state(1)[0])


def synthesize_dataset(
    out_dir: PathLike,
    studies: int = 100,
    frames: int = 8,
    image_size: int = 256,
    seed: int = 0,
    ratios: Sequence[float] = (80, 8, 12),
    tasks: Sequence[str] = DEFAULT_TASKS,
    phantom: str = "v2",
    test_frames: int | None = 24,
) -> Path:
    """Write a phantom VFSS dataset and its datalist; returns the datalist path.

    The studies are split by study first (:func:`~vfss_agglo_bundle.data.datalist.split_studies`); training and
    validation studies get ``frames`` frames each, test studies ``test_frames`` (``None``: ``frames``): many short
    studies vary what a study draws (magnification, facing, field of view, shutters, ...) for training, while
    long test studies are what swallow kinematics are measured on. Each study's frames sample one swallow of
    ``duration_s`` (3 s), so its frame rate is ``(n - 1) / 3`` frames a second.

    ``phantom``: ``v2`` (domain-randomised: field of view, facing, shutters, shoulders, text, letterboxing, ...) or
    ``v1`` (its plain look), see :mod:`vfss_agglo_bundle.phantom.anatomy`.

    Besides frames and labels, each study's ground-truth kinematics go to ``kinematics/<study>.json``
    (:func:`~vfss_agglo_bundle.phantom.truth.study_truth`). The datalist records these settings under ``source``
    (:func:`ensure_dataset` refuses a folder made with other ones). An interrupted run resumes: files already on
    disk are kept, and the datalist (written last) marks completion.
    """
    out_dir = Path(out_dir)
    datalist_path = out_dir / DATALIST_NAME
    if datalist_path.exists():
        raise FileExistsError(f"{datalist_path} already exists; delete {out_dir} or choose another folder.")
    test_frames = frames if test_frames is None else test_frames
    names = [f"s{s:03d}" for s in range(studies)]
    test_studies = set(split_studies(names, ratios, seed)["test"])
    configs = {n: phantom_config(phantom, image_size=image_size, num_frames=n) for n in {frames, test_frames}}
    items = []
    for s, study in enumerate(tqdm(names, desc="phantom studies", unit="study")):
        cfg = configs[test_frames if study in test_studies else frames]
        paths = [frame_paths(study, f) for f in range(cfg.num_frames)]
        if not all((out_dir / im).exists() and (out_dir / lb).exists() for im, lb in paths):
            for f, (image, label) in enumerate(simulate_study(study_seed(seed, s), cfg, tasks)):
                im, lb = paths[f]
                write_label(out_dir / lb, label, overwrite=True)
                write_frame(out_dir / im, image, overwrite=True)
        truth_path = out_dir / KINEMATICS_DIR / f"{study}.json"
        if not truth_path.exists():
            write_json(truth_path, {"study": study, **study_truth(study_seed(seed, s), cfg)})
        items += [{"image": im, "label": lb, "study": study, "frame": f} for f, (im, lb) in enumerate(paths)]
    datalist = build_datalist(items, tasks, image_size, ratios, seed)
    datalist["source"] = {
        "generator": GENERATOR,
        **phantom_settings(studies, frames, test_frames, image_size, seed, ratios, phantom),
        "fps": configs[frames].fps,
        "test_fps": configs[test_frames].fps,
        "kinematics": KINEMATICS_DIR,
    }
    write_json(datalist_path, datalist)
    logger.info("wrote %d frames of %d phantom studies to %s", len(items), studies, out_dir)
    return datalist_path


def phantom_settings(
    studies: int,
    frames: int,
    test_frames: int | None,
    image_size: int,
    seed: int,
    ratios: Sequence[float],
    phantom: str,
) -> dict:
    """The settings a phantom datalist records under ``source`` (and :func:`ensure_dataset` compares)."""
    return {
        "phantom": phantom,
        "seed": int(seed),
        "studies": int(studies),
        "frames": int(frames),
        "test_frames": int(frames if test_frames is None else test_frames),
        "image_size": int(image_size),
        "ratios": [float(r) for r in ratios],
    }


def check_phantom_settings(datalist_path: PathLike, asked: dict) -> None:
    """Refuse a phantom datalist made with other phantom settings than ``asked`` (:func:`phantom_settings`).

    A datalist that is not the phantom's (a user's own data) is not checked. Of the settings a datalist from before
    0.8.0 does not record, ``test_frames`` was ``frames`` and ``image_size`` the datalist's own; ``ratios`` is then
    not compared.

    Raises:
        ValueError: naming every setting that differs, both values, and what to do.
    """
    datalist = read_json(datalist_path)
    source = datalist.get("source") or {}
    if source.get("generator") != GENERATOR:
        return
    recorded = {
        "test_frames": source.get("frames"),
        "image_size": datalist.get("image_size"),
        **{k: v for k, v in source.items() if k in asked},
    }
    differ = [f"{k}: made with {recorded[k]!r}, asked for {v!r}" for k, v in asked.items() if recorded.get(k, v) != v]
    if differ:
        raise ValueError(
            f"{datalist_path} holds a phantom dataset made with other settings ({'; '.join(differ)}). It is never "
            "overwritten: pass another --dataset_dir for the new settings, delete that folder to regenerate it, or "
            "ask for the settings it was made with."
        )


def ensure_dataset(
    dataset_dir: PathLike,
    tasks: Sequence[str] = DEFAULT_TASKS,
    studies: int = 100,
    frames: int = 8,
    image_size: int = 256,
    seed: int = 0,
    ratios: Sequence[float] = (80, 8, 12),
    phantom: str = "v2",
    test_frames: int | None = 24,
) -> str:
    """Return ``dataset_dir/datalist.json``, generating a phantom dataset (``phantom`` v2 or v1) there first if it
    has none.

    An existing datalist is used as it is, never rewritten, after checking its task list against ``tasks``, every
    frame and label it names (:func:`~vfss_agglo_bundle.data.prepare.check_dataset`) and, for a phantom datalist, the
    phantom settings it was made with against the ones asked for (:func:`check_phantom_settings`): bad input stops the
    run before any work is done.

    Under ``torchrun`` rank 0 does this first while the other ranks wait; they then find its datalist. Other runs on
    the same folder (the study's runners) wait while one writes it (an OS lock on ``dataset_dir/.writing.lock``).

    Raises:
        ValueError: the datalist was built for other tasks, or is a phantom made with other settings.
        DataFormatError: one error listing every problem found, each naming its file.
    """
    datalist_path = Path(dataset_dir) / DATALIST_NAME
    with main_process_first("writing the dataset"):  # under torchrun: rank 0 writes it, the others then find it
        if not datalist_path.exists():
            with exclusive_lock(Path(dataset_dir) / WRITING_LOCK):  # other runs on this folder wait, then find it
                if not datalist_path.exists():
                    in_test = frames if test_frames is None else test_frames
                    logger.info("dataset: no datalist in %s, generating %d phantom studies (%s, %d frames each, %d for "
                                "test studies)", dataset_dir, studies, phantom, frames, in_test)  # fmt: skip
                    return str(synthesize_dataset(dataset_dir, studies, frames, image_size, seed, ratios, tasks,
                                                  phantom, test_frames))  # fmt: skip
        check_dataset(datalist_path, tasks)
        check_phantom_settings(
            datalist_path, phantom_settings(studies, frames, test_frames, image_size, seed, ratios, phantom)
        )
        logger.info("dataset: found %s, its frames and labels check out; skipping phantom generation", datalist_path)
        return str(datalist_path)
