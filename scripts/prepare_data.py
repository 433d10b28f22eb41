"""Prepare VFSS data in the bundle's format.

python scripts/prepare_data.py synth --out_dir data/phantom --studies 100 --frames 8 --test_frames 24
python scripts/prepare_data.py import_masks --src export/ --out_dir data/vfss
python scripts/prepare_data.py import_video --video swallow.mp4 --out_dir data/frames
python scripts/prepare_data.py validate --datalist data/phantom/datalist.json
python scripts/prepare_data.py preview --datalist data/phantom/datalist.json --out docs/phantom_preview.png
"""

from __future__ import annotations

import logging
import sys

import fire
from vfss_agglo_bundle.data.datalist import validate_datalist
from vfss_agglo_bundle.data.prepare import import_mask_folder, preview_datalist
from vfss_agglo_bundle.data.sources import import_video_frames
from vfss_agglo_bundle.data.tasks import DEFAULT_TASKS
from vfss_agglo_bundle.phantom.dataset import synthesize_dataset


def synth(
    out_dir: str,
    studies: int = 100,
    frames: int = 8,
    image_size: int = 256,
    seed: int = 0,
    ratios: tuple = (80, 8, 12),
    tasks: tuple = DEFAULT_TASKS,
    phantom: str = "v2",
    test_frames: int | None = 24,
) -> str:
    """Write a phantom dataset and its datalist split by study: ``frames`` frames per training and validation study,
    ``test_frames`` per test study (``phantom``: v2, the domain-randomised default, or v1, its plain look)."""
    return str(synthesize_dataset(out_dir, studies, frames, image_size, seed, ratios, tasks, phantom, test_frames))


def import_masks(
    src: str,
    out_dir: str,
    tasks: tuple = DEFAULT_TASKS,
    frames_dir: str = "frames",
    masks_dir: str = "masks",
    mask_pattern: str = "{frame}_{task}.png",
    image_size: int | None = None,
    ratios: tuple = (9, 3, 4),
    seed: int = 0,
) -> str:
    """Convert src/<study>/frames/<frame>.png + src/<study>/masks/<frame>_<task>.png into the bundle format."""
    return str(import_mask_folder(src, out_dir, tasks, frames_dir, masks_dir, mask_pattern, image_size, ratios, seed))


def import_video(
    video: str, out_dir: str, study: str | None = None, every: int = 1, image_size: int | None = None
) -> int:
    """Extract grey PNG frames from a video file into out_dir/images/<study>/."""
    return len(import_video_frames(video, out_dir, study, every, image_size))


def validate(datalist: str, tasks: list | None = None) -> None:
    """Check a datalist; print one line per problem and exit 1 if there is any."""
    problems = validate_datalist(datalist, tasks)
    for line in problems:
        print(line)
    if problems:
        sys.exit(1)
    print(f"{datalist}: OK")


def preview(
    datalist: str,
    out: str,
    split: str = "training",
    num: int = 12,
    cols: int = 4,
    study: str | None = None,
    one_per_study: bool = False,
) -> str:
    """Save a contact sheet PNG of frames with coloured label overlays (``split`` all: every split;
    ``one_per_study``: the middle frame of each study)."""
    return str(preview_datalist(datalist, out, split, num, cols, study, one_per_study))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    fire.Fire(
        {
            "synth": synth,
            "import_masks": import_masks,
            "import_video": import_video,
            "validate": validate,
            "preview": preview,
        }
    )
