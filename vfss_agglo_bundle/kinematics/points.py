"""Checking masks and kinematics against hand-tracked points (hyoid, C2, C4), the way many swallowing labs annotate.

A points CSV has the columns ``frame, structure, x, y`` (and ``study`` when it holds several studies; CVAT and
LabelMe points import to the same, ``points.csv``). Coordinates are pixels of the frame, pixel ``(row r, column c)``
covering ``[c, c + 1) x [r, r + 1)``; a mask pixel counts at its centre ``(c + 0.5, r + 0.5)``.

Per frame with points: the hyoid error (mask centroid to the hyoid point), the C2 and C4 point-to-mask distances
(0 inside the mask), all in %(C2-4) (the hand C2-C4 distance when both are tracked, else the masks'); and the hyoid
displacement curve both ways: the hyoid's position in the spine frame (origin C4, ``up`` towards C2, ``anterior``
towards the hyoid) of the hand points and of the masks, displacement from the first frame, in %(C2-4).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from vfss_agglo_bundle.kinematics.folders import DEFAULT_PATTERN, read_mask_frames
from vfss_agglo_bundle.kinematics.frame import frame_geometry
from vfss_agglo_bundle.kinematics.steadying import STEADY_SECONDS, steady_masks, steady_radius
from vfss_agglo_bundle.utils.io import DataFormatError, PathLike

__all__ = [
    "POINT_STRUCTURES",
    "compare_points",
    "points_csv",
    "points_markdown",
    "points_sheet",
    "read_points",
    "summarise_points",
    "validate_points",
]

POINT_STRUCTURES = ("hyoid", "c2", "c4")
COLUMNS = ("frame", "structure", "x", "y")
Points = dict[str, dict[int, dict[str, np.ndarray]]]  # study -> frame -> structure -> (x, y)


def read_points(path: PathLike, study: str | None = None) -> Points:
    """Read a points CSV; rows without a ``study`` column belong to ``study`` (default: the file's stem).

    Raises:
        DataFormatError: a missing column, a value that is not a number, or a structure other than hyoid, c2, c4.
    """
    path = Path(path)
    found: Points = {}
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DataFormatError(f"{path}: no column(s) {missing}; a points CSV has {list(COLUMNS)} (+ study).")
            for line, row in enumerate(reader, start=2):
                name = row["structure"].strip().lower()
                if name not in POINT_STRUCTURES:
                    raise DataFormatError(f"{path} line {line}: structure {row['structure']!r} is not one of "
                                          f"{list(POINT_STRUCTURES)}.")  # fmt: skip
                try:
                    frame, point = int(row["frame"]), np.array([float(row["x"]), float(row["y"])])
                except ValueError as err:
                    raise DataFormatError(f"{path} line {line}: frame, x and y must be numbers ({err}).") from err
                key = row.get("study") or study or path.stem
                found.setdefault(key, {}).setdefault(frame, {})[name] = point
    except OSError as err:
        raise DataFormatError(f"cannot read the points file {path} ({err}).") from err
    if not found:
        raise DataFormatError(f"{path} has no points.")
    return found


def _pixel_centres(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    return np.stack([cols + 0.5, rows + 0.5], axis=1)


def _distance_to_mask(point: np.ndarray, mask: np.ndarray) -> float:
    """Pixels from ``point`` to the nearest pixel of ``mask`` (0 inside it; NaN for an empty mask)."""
    r, c = int(math.floor(point[1])), int(math.floor(point[0]))
    if 0 <= r < mask.shape[0] and 0 <= c < mask.shape[1] and mask[r, c]:
        return 0.0
    centres = _pixel_centres(mask)
    return float(np.min(np.linalg.norm(centres - point, axis=1))) if len(centres) else math.nan


def _spine(c4: np.ndarray, c2: np.ndarray, hyoid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    up = (c2 - c4) / np.linalg.norm(c2 - c4)
    anterior = np.array([-up[1], up[0]])
    return up, anterior if (hyoid - c4) @ anterior >= 0 else -anterior


def compare_points(
    masks: Iterable[np.ndarray], frames: Sequence[int], tasks: Sequence[str], points: Mapping[int, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """One row per frame of ``frames`` that has points: errors and both hyoid positions, in %(C2-4).

    Args:
        masks: ``[K, H, W]`` masks of the study's frames, in ``frames`` order (read one at a time).
        frames: the frame numbers the points refer to.
        tasks: the masks' tasks (hyoid, c2 and c4 among them).
        points: frame -> structure -> ``(x, y)``.
    """
    index = {t: i for i, t in enumerate(tasks)}
    missing = [t for t in POINT_STRUCTURES if t not in index]
    if missing:
        raise ValueError(f"the masks have no {missing} channel(s); tasks are {list(tasks)}.")
    rows = []
    for frame, mask in zip(frames, masks, strict=True):
        hand = points.get(frame)
        if not hand:
            continue
        mask = np.asarray(mask) > 0
        geometry = frame_geometry(mask, tasks)
        hand_length = float(np.linalg.norm(hand["c2"] - hand["c4"])) if {"c2", "c4"} <= set(hand) else None
        scale = hand_length or geometry.length
        row: dict[str, Any] = {"frame": frame, "c2_c4_px": scale}
        hyoid_pixels = _pixel_centres(mask[index["hyoid"]])
        centroid = hyoid_pixels.mean(0) if len(hyoid_pixels) else None
        if "hyoid" in hand and centroid is not None and scale:
            row["hyoid_error"] = 100 * float(np.linalg.norm(centroid - hand["hyoid"])) / scale
        for name in ("c2", "c4"):
            if name in hand and scale:
                row[f"{name}_distance"] = 100 * _distance_to_mask(hand[name], mask[index[name]]) / scale
        if hand_length and "hyoid" in hand:
            up, anterior = _spine(hand["c4"], hand["c2"], hand["hyoid"])
            offset = hand["hyoid"] - hand["c4"]
            row["hand_hyoid"] = (100 * float(offset @ anterior) / scale, 100 * float(offset @ up) / scale)
        if centroid is not None and geometry.length:
            c4, c2 = geometry.c4 + 0.5, geometry.c2 + 0.5  # pixel indices -> pixel centres
            up, anterior = _spine(c4, c2, centroid)
            offset = centroid - c4
            length = geometry.length
            row["mask_hyoid"] = (100 * float(offset @ anterior) / length, 100 * float(offset @ up) / length)
        rows.append(row)
    for key in ("hand_hyoid", "mask_hyoid"):  # displacement from the first frame that has the position
        first = next((r[key] for r in rows if key in r), None)
        for r in rows:
            if key in r:
                r[key.replace("hyoid", "displacement")] = float(np.hypot(*np.subtract(r[key], first)))
    return rows


def summarise_points(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean, median and max of each error, and of the hand-mask displacement difference, over ``rows``."""
    out = {}
    for key in ("hyoid_error", "c2_distance", "c4_distance", "displacement_difference"):
        if key == "displacement_difference":
            values = [abs(r["hand_displacement"] - r["mask_displacement"]) for r in rows
                      if "hand_displacement" in r and "mask_displacement" in r]  # fmt: skip
        else:
            values = [r[key] for r in rows if key in r and not math.isnan(r[key])]
        if values:
            out[key] = {"frames": len(values), "mean": float(np.mean(values)), "median": float(np.median(values)),
                        "max": float(np.max(values))}  # fmt: skip
    return out


def points_sheet(rows: Sequence[Mapping[str, Any]], title: str = "") -> np.ndarray:
    """RGB picture: the hyoid displacement curves (hand points and masks) over frames, and the per-frame errors."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    for key, style, label in (("hand_displacement", "o-", "hand points"), ("mask_displacement", "s--", "masks")):
        frames = [r["frame"] for r in rows if key in r]
        left.plot(frames, [r[key] for r in rows if key in r], style, ms=3, label=label)
    left.set_xlabel("frame")
    left.set_ylabel("hyoid displacement (%C2-4)")
    left.legend()
    for key, label in (("hyoid_error", "hyoid centroid error"), ("c2_distance", "C2 point to mask"),
                       ("c4_distance", "C4 point to mask")):  # fmt: skip
        frames = [r["frame"] for r in rows if key in r]
        right.plot(frames, [r[key] for r in rows if key in r], ".-", label=label)
    right.set_xlabel("frame")
    right.set_ylabel("%C2-4")
    right.legend()
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


def validate_points(
    points: PathLike,
    masks: PathLike,
    tasks: Sequence[str],
    pattern: str = DEFAULT_PATTERN,
    fps: float | None = None,
    steady_seconds: float | None = STEADY_SECONDS,
) -> dict[str, Any]:
    """Compare the masks of every study in ``points`` (``masks/<study>/``, NIfTI or PNG per ``pattern``; a single
    study may lie in ``masks`` itself) with its hand-tracked points. Frames are matched by number (the mask file's
    name, e.g. ``0012.nii.gz``). With ``fps`` the masks are steadied first over ``steady_seconds``.

    Returns ``{"studies": {study: {"rows": [...], "summary": {...}}}, "summary": {...}}``.
    """
    masks = Path(masks)
    studies = {}
    for study, by_frame in sorted(read_points(points).items()):
        folder = masks / study if (masks / study).is_dir() else masks
        names, study_masks = read_mask_frames(folder, tasks, pattern)
        numbers = [int(n) if n.isdigit() else i for i, n in enumerate(names)]
        unmatched = sorted(set(by_frame) - set(numbers))
        if unmatched:
            raise DataFormatError(f"{points}: study {study!r} has points on frames {unmatched[:5]} that have no masks "
                                  f"in {folder}.")  # fmt: skip
        if fps and steady_seconds:
            study_masks = steady_masks(study_masks, steady_radius(fps, steady_seconds))
        rows = compare_points(study_masks, numbers, tasks, by_frame)
        studies[study] = {"rows": rows, "summary": summarise_points(rows)}
    every = [row for s in studies.values() for row in s["rows"]]
    return {"points": str(points), "masks": str(masks), "studies": studies, "summary": summarise_points(every)}


def points_markdown(report: Mapping[str, Any]) -> str:
    """The summary table of :func:`validate_points` (per study and over all)."""
    lines = [f"# Masks against hand-tracked points ({report['points']})", "",
             "Errors in %(C2-4): hyoid = mask centroid to the hyoid point; C2, C4 = point to the nearest mask pixel "
             "(0 inside); displacement = |hand - mask| hyoid displacement from the first frame.", "",
             "| study | measure | frames | mean | median | max |", "|---|---|---|---|---|---|"]  # fmt: skip
    for study, summary in [*((s, v["summary"]) for s, v in report["studies"].items()), ("all", report["summary"])]:
        for key, stats in summary.items():
            lines.append(f"| {study} | {key} | {stats['frames']} | {stats['mean']:.2f} | {stats['median']:.2f} | "
                         f"{stats['max']:.2f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def points_csv(report: Mapping[str, Any]) -> str:
    """The per-frame table of :func:`validate_points`, as CSV text."""
    out = io.StringIO()
    keys = ["c2_c4_px", "hyoid_error", "c2_distance", "c4_distance", "hand_displacement", "mask_displacement"]
    writer = csv.writer(out)
    writer.writerow(["study", "frame", *keys])
    for study, s in report["studies"].items():
        for row in s["rows"]:
            writer.writerow([study, row["frame"], *("" if row.get(k) is None else f"{row[k]:.4f}" for k in keys)])
    return out.getvalue()
