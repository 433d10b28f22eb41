"""Prepare VFSS data in the bundle's format.

python scripts/prepare_data.py synth --out_dir data/phantom --studies 100 --frames 8 --test_frames 24
python scripts/prepare_data.py import_masks --src export/ --out_dir data/vfss
python scripts/prepare_data.py import_coco --annotations instances.json --out_dir data/vfss --label_map map.yaml
python scripts/prepare_data.py import_cvat --annotations "['s01.xml','s02.xml']" --frames "['s01.mp4','s02.mp4']" \
    --out_dir data/vfss
python scripts/prepare_data.py import_labelme --folder labelme/ --out_dir data/vfss
python scripts/prepare_data.py import_video --video swallow.mp4 --out_dir data/frames
python scripts/prepare_data.py validate --datalist data/phantom/datalist.json
python scripts/prepare_data.py preview --datalist data/phantom/datalist.json --out docs/phantom_preview.png
"""

from __future__ import annotations

import logging
import sys

import fire
from vfss_agglo_bundle.data.annotations import (
    LINE_WIDTH,
    load_label_map,
    read_coco,
    read_cvat_video,
    read_labelme,
    write_annotated,
)
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


def import_coco(
    annotations: str,
    out_dir: str,
    images_dir: str | None = None,
    label_map: str | None = None,
    tasks: tuple = DEFAULT_TASKS,
    ratios: tuple = (9, 3, 4),
    seed: int = 0,
    line_width: int = LINE_WIDTH,
) -> str:
    """Convert a COCO instances JSON (polygons, RLE; the study of an image is the folder of its file_name)."""
    frames = read_coco(annotations, images_dir)
    return str(
        write_annotated(frames, out_dir, load_label_map(label_map, tasks), annotations, ratios, seed, line_width)
    )


def import_cvat(
    annotations: str | list,
    frames: str | list,
    out_dir: str,
    label_map: str | None = None,
    tasks: tuple = DEFAULT_TASKS,
    ratios: tuple = (9, 3, 4),
    seed: int = 0,
    line_width: int = LINE_WIDTH,
) -> str:
    """Convert "CVAT for video 1.1" XML exports, one per study (named after the XML), each with its video or frames
    folder (``frames``, in the same order); tracks are interpolated between keyframes, points go to points.csv."""
    files = [annotations] if isinstance(annotations, str) else list(annotations)
    sources = [frames] if isinstance(frames, str) else list(frames)
    if len(files) != len(sources):
        raise ValueError(
            f"{len(files)} annotation file(s) but {len(sources)} video(s) or frame folder(s); give one each."
        )
    found = [frame for xml, src in zip(files, sources, strict=True) for frame in read_cvat_video(xml, src)]
    mapping = load_label_map(label_map, tasks)
    return str(write_annotated(found, out_dir, mapping, ", ".join(files), ratios, seed, line_width))


def import_labelme(
    folder: str,
    out_dir: str,
    label_map: str | None = None,
    tasks: tuple = DEFAULT_TASKS,
    ratios: tuple = (9, 3, 4),
    seed: int = 0,
    line_width: int = LINE_WIDTH,
) -> str:
    """Convert LabelMe JSON files (folder/<study>/<frame>.json, one per frame) into the bundle format."""
    frames = read_labelme(folder)
    return str(write_annotated(frames, out_dir, load_label_map(label_map, tasks), folder, ratios, seed, line_width))


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
            "import_coco": import_coco,
            "import_cvat": import_cvat,
            "import_labelme": import_labelme,
            "import_video": import_video,
            "validate": validate,
            "preview": preview,
        }
    )
