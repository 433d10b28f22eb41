"""Swallow kinematics from masks already on disk, and their error against the phantom's ground truth.

    python scripts/kinematics.py measure --masks eval/inference/masks --out_dir eval/kinematics --fps 30
    python scripts/kinematics.py measure --masks export/ --pattern "{frame}_{task}.png" --fps 15 --mm_per_px 0.3
    python scripts/kinematics.py validate --datalist data/phantom/datalist.json --predictions eval/test/masks
    python scripts/kinematics.py validate --points tracks.csv --predictions eval/inference/masks --fps 30

`measure` reads <masks>/<study>/<frame>.nii.gz (the bundle's format) or one PNG per structure per frame named by
--pattern, and writes <out_dir>/<study>.csv, .json and .png. `validate` compares the kinematics of a phantom split
with its truth, from the ground-truth masks and (with --predictions, `inferring`'s masks/ folder) the model's; with
--points (a CSV of frame, structure, x, y: hand-tracked hyoid, C2, C4; `prepare_data.py import_cvat` writes one) it
compares the masks under --predictions with those points instead (hyoid centroid error, C2/C4 point-to-mask
distance, hyoid displacement curves, all in %(C2-4)) and writes <out>.md, .csv, .json and one sheet per study.
Predicted masks are steadied first: a per-pixel majority vote over a centred window of about --steady_seconds
(0.15 s); --steady_seconds 0 turns it off (do so when `measure` reads ground-truth masks; `validate` never steadies
the ground truth).
"""

from __future__ import annotations

import logging

import fire
from vfss_agglo_bundle.data.tasks import DEFAULT_TASKS
from vfss_agglo_bundle.kinematics.folders import DEFAULT_PATTERN, measure_folder
from vfss_agglo_bundle.kinematics.outputs import json_ready
from vfss_agglo_bundle.kinematics.points import points_csv, points_markdown, points_sheet, validate_points
from vfss_agglo_bundle.kinematics.steadying import STEADY_SECONDS
from vfss_agglo_bundle.kinematics.validation import to_markdown, validate_split
from vfss_agglo_bundle.utils.cli import split_names
from vfss_agglo_bundle.utils.io import write_json, write_text
from vfss_agglo_bundle.visualize import save_png

TASKS = ",".join(DEFAULT_TASKS)


def measure(
    masks: str,
    out_dir: str = "eval/kinematics",
    fps: float | None = None,
    tasks: str | tuple = TASKS,
    pattern: str = DEFAULT_PATTERN,
    mm_per_px: float | None = None,
    steady_seconds: float = STEADY_SECONDS,
) -> str:
    """Measure every study of a mask folder (steadied over ``steady_seconds``, 0: off); prints a line per study and
    returns the output folder."""
    results = measure_folder(masks, out_dir, fps, split_names(tasks), pattern, mm_per_px, steady_seconds)
    for study, result in results.items():
        print(
            f"{study}: {len(result['swallows'])} swallow(s), {len(result['flags'])} flag(s) -> {out_dir}/{study}.json"
        )
    return out_dir


def validate(
    datalist: str = "data/phantom/datalist.json",
    split: str = "test",
    predictions: str | None = None,
    out: str = "eval/kinematics_validation",
    steady_seconds: float = STEADY_SECONDS,
    points: str | None = None,
    tasks: str | tuple | None = None,
    pattern: str = DEFAULT_PATTERN,
    fps: float | None = None,
) -> str:
    """Error tables of a phantom split: writes <out>.md and <out>.json (kept, not overwritten) and prints the table.
    The predicted masks are steadied over ``steady_seconds`` (0: off). With ``points`` the masks under
    ``predictions`` are compared with hand-tracked points instead (steadied only when ``fps`` is given). ``tasks``:
    the masks' tasks (default: the datalist's; with ``points``: the 12 default tasks)."""
    if points is not None:
        if predictions is None:
            raise ValueError("--points compares masks with the points: give the masks folder as --predictions.")
        report = validate_points(points, predictions, split_names(tasks or TASKS), pattern, fps, steady_seconds)
        table = points_markdown(report)
        write_text(f"{out}.md", table, keep_old=True)
        write_text(f"{out}.csv", points_csv(report), keep_old=True)
        write_json(f"{out}.json", json_ready(report), keep_old=True)
        for study, found in report["studies"].items():
            save_png(f"{out}_{study}.png", points_sheet(found["rows"], f"{study}: masks against hand points"),
                     keep_old=True)  # fmt: skip
        print(table)
        return f"{out}.md"
    report = validate_split(datalist, split, predictions, tasks=tasks, steady_seconds=steady_seconds)
    table = to_markdown(report)
    write_text(f"{out}.md", table, keep_old=True)
    write_json(f"{out}.json", json_ready(report), keep_old=True)
    print(table)
    return f"{out}.md"


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    fire.Fire({"measure": measure, "validate": validate})
