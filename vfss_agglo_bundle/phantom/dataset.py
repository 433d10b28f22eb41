"""A phantom dataset on disk, in the bundle's format: frames, labels, each study's ground-truth kinematics and the
datalist split by study (:func:`synthesize_dataset`); :func:`ensure_dataset` writes one where a run finds none.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm
from vfss_agglo_bundle.data.datalist import build_datalist
from vfss_agglo_bundle.data.formats import write_frame, write_label
from vfss_agglo_bundle.data.prepare import DATALIST_NAME, check_dataset, frame_paths
from vfss_agglo_bundle.data.tasks import DEFAULT_TASKS
from vfss_agglo_bundle.phantom.anatomy import phantom_config
from vfss_agglo_bundle.phantom.render import simulate_study
from vfss_agglo_bundle.phantom.truth import study_truth
from vfss_agglo_bundle.utils.distributed import main_process_first
from vfss_agglo_bundle.utils.io import PathLike, write_json

__all__ = ["KINEMATICS_DIR", "ensure_dataset", "study_seed", "synthesize_dataset"]

logger = logging.getLogger(__name__)

KINEMATICS_DIR = "kinematics"  # a phantom dataset's ground-truth kinematics, one JSON per study


def study_seed(seed: int, study: int) -> int:
    """Seed of one phantom study, independent of how many studies are generated."""
    return int(np.random.SeedSequence([seed, study]).generate_state(1)[0])


def synthesize_dataset(
    out_dir: PathLike,
    studies: int = 16,
    frames: int = 24,
    image_size: int = 256,
    seed: int = 0,
    ratios: Sequence[float] = (9, 3, 4),
    tasks: Sequence[str] = DEFAULT_TASKS,
    phantom: str = "v2",
) -> Path:
    """Write a phantom VFSS dataset and its datalist; returns the datalist path.

    ``phantom``: ``v2`` (domain-randomised: field of view, facing, shutters, shoulders, text, letterboxing, ...) or
    ``v1`` (its plain look), see :mod:`vfss_agglo_bundle.phantom.anatomy`.

    Besides frames and labels, each study's ground-truth kinematics go to ``kinematics/<study>.json``
    (:func:`~vfss_agglo_bundle.phantom.truth.study_truth`). An interrupted run resumes: files already on disk are
    kept, and the datalist (written last) marks completion.
    """
    out_dir = Path(out_dir)
    datalist_path = out_dir / DATALIST_NAME
    if datalist_path.exists():
        raise FileExistsError(f"{datalist_path} already exists; delete {out_dir} or choose another folder.")
    cfg = phantom_config(phantom, image_size=image_size, num_frames=frames)
    items = []
    for s in tqdm(range(studies), desc="phantom studies", unit="study"):
        study = f"s{s:03d}"
        paths = [frame_paths(study, f) for f in range(frames)]
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
        "generator": "vfss_agglo_bundle.phantom",
        "phantom": phantom,
        "seed": seed,
        "studies": studies,
        "frames": frames,
        "fps": cfg.fps,
        "kinematics": KINEMATICS_DIR,
    }
    write_json(datalist_path, datalist)
    logger.info("wrote %d frames of %d phantom studies to %s", len(items), studies, out_dir)
    return datalist_path


def ensure_dataset(
    dataset_dir: PathLike,
    tasks: Sequence[str] = DEFAULT_TASKS,
    studies: int = 16,
    frames: int = 24,
    image_size: int = 256,
    seed: int = 0,
    ratios: Sequence[float] = (9, 3, 4),
    phantom: str = "v2",
) -> str:
    """Return ``dataset_dir/datalist.json``, generating a phantom dataset (``phantom`` v2 or v1) there first if it
    has none.

    An existing datalist is used as it is, never rewritten, after checking its task list against ``tasks`` and every
    frame and label it names (:func:`~vfss_agglo_bundle.data.prepare.check_dataset`): bad input stops the run before
    any work is done.

    Under ``torchrun`` rank 0 does this first while the other ranks wait; they then find its datalist.

    Raises:
        ValueError: the datalist was built for other tasks.
        DataFormatError: one error listing every problem found, each naming its file.
    """
    datalist_path = Path(dataset_dir) / DATALIST_NAME
    with main_process_first("writing the dataset"):  # under torchrun: rank 0 writes it, the others then find it
        if datalist_path.exists():
            check_dataset(datalist_path, tasks)
            logger.info(
                "dataset: found %s, its frames and labels check out; skipping phantom generation", datalist_path
            )
            return str(datalist_path)
        logger.info(
            "dataset: no datalist in %s, generating %d phantom studies x %d frames", dataset_dir, studies, frames
        )
        return str(synthesize_dataset(dataset_dir, studies, frames, image_size, seed, ratios, tasks, phantom))
