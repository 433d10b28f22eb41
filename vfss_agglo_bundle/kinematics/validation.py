"""How far the kinematics are from the phantom's truth: (a) measured on the ground-truth masks (the method's own
error) and (b) on a model's predicted masks (end to end), per study of a split and summarised against targets."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm
from vfss_agglo_bundle.data.datalist import label_channels, load_datalist
from vfss_agglo_bundle.data.formats import read_label
from vfss_agglo_bundle.kinematics.frame import frame_geometry
from vfss_agglo_bundle.kinematics.measures import EVENTS, analyse
from vfss_agglo_bundle.kinematics.steadying import STEADY_SECONDS, steady_masks, steady_radius
from vfss_agglo_bundle.utils.cli import split_names
from vfss_agglo_bundle.utils.io import PathLike, read_json

__all__ = ["MEASURES", "TARGETS", "compare", "summarise", "to_markdown", "validate_split"]

MEASURES = (
    "hyoid_peak_displacement",
    "hyoid_rest_to_peak_x",
    "hyoid_rest_to_peak_y",
    "hyoid_peak_x",
    "hyoid_peak_y",
    "hyoid_max_speed",
    "pharyngeal_constriction_ratio",
    "pharyngeal_area_rest",
    "ues_max_width",
    "epiglottis_max_angle",
    "residue_area",
    "stage_transition_s",
    "hyb_to_ueso_s",
    "ues_opening_duration_s",
    "pharyngeal_transit_s",
)
# targets of the kinematics issue: (a) ground-truth masks, (b) predicted masks
TARGETS = {"hyoid_peak_displacement": (3.0, 10.0), "pharyngeal_constriction_ratio": (0.03, 0.10), "events": (1, 2)}
UNITS = {"speed": "%C2-4/s", "angle": "deg", "area": "%C2-4^2", "ratio": ""}


def _unit(name: str) -> str:
    if name.endswith("_s"):
        return "s"
    return next((u for key, u in UNITS.items() if key in name), "%C2-4")


def compare(result: dict[str, Any], truth: dict[str, Any]) -> dict[str, Any]:
    """Errors (measured - truth) of the truth's first swallow: events in frames, measures in their units.

    The measured swallow compared is the one that starts nearest the true HYB; none found gives
    ``{"detected": False}``.
    """
    true = truth["swallows"][0]
    if not result.get("swallows"):
        return {"detected": False}
    anchor = true["events"]["HYB"] or 0
    swallow = min(result["swallows"], key=lambda s: abs(s["frames"][0] - anchor))
    events = {}
    for name in EVENTS:
        m, t = swallow["events"][name], true["events"][name]
        events[name] = None if m is None or t is None else int(m - t)
    measures = {}
    for name in MEASURES:
        m, t = swallow["measures"].get(name), true["measures"].get(name)
        ok = isinstance(m, (int, float)) and isinstance(t, (int, float)) and math.isfinite(m) and math.isfinite(t)
        measures[name] = float(m - t) if ok else None
    inversion = swallow["measures"].get("epiglottis_inversion") == true["measures"].get("epiglottis_inversion")
    return {"detected": True, "swallows": len(result["swallows"]), "events": events, "measures": measures,
            "inversion_agrees": inversion, "flags": result["flags"] + swallow["flags"]}  # fmt: skip


def _measure(masks: Sequence[np.ndarray] | Any, tasks: Sequence[str], fps: float) -> dict[str, Any]:
    return analyse([frame_geometry(m, tasks) for m in masks], tasks, fps)


def validate_split(
    datalist: PathLike,
    split: str = "test",
    predictions: PathLike | None = None,
    tasks: Sequence[str] | None = None,
    steady_seconds: float | None = STEADY_SECONDS,
) -> dict[str, Any]:
    """Compare the kinematics of every study of ``split`` with its truth (``kinematics/<study>.json`` beside the
    datalist), from the ground-truth masks and, when ``predictions`` (``inferring``'s ``masks/`` folder, one
    ``<study>/<frame:04d>.nii.gz`` per frame) is given, from the predicted masks, steadied first by a per-pixel
    majority vote over about ``steady_seconds`` (:mod:`~vfss_agglo_bundle.kinematics.steadying`; 0 or ``None``: off;
    the ground-truth masks are never steadied).

    Returns ``{"studies": {study: {"labels": compare(...), "predicted": compare(...)}}, "summary": ..., ...}``.

    Raises:
        FileNotFoundError: the datalist has no truth (not a phantom dataset, or made before truth was written:
            regenerate it) or a predicted mask is missing.
    """
    datalist = Path(datalist)
    meta = read_json(datalist)
    tasks = split_names(tasks) if tasks else list(meta.get("tasks"))
    channels = label_channels(datalist, tasks)  # a task subset reads its own channels of the labels
    truth_dir = datalist.parent / meta.get("source", {}).get("kinematics", "kinematics")
    by_study: dict[str, list[dict]] = defaultdict(list)
    for item in load_datalist(datalist, split, tasks):
        by_study[item["study"]].append(item)
    if not by_study:
        raise ValueError(f"{datalist} has no {split!r} frames.")
    studies: dict[str, dict[str, Any]] = {}
    for study, items in tqdm(sorted(by_study.items()), desc=f"kinematics of the {split} split", unit="study"):
        truth_path = truth_dir / f"{study}.json"
        if not truth_path.is_file():
            raise FileNotFoundError(
                f"{truth_path} does not exist: {datalist} has no ground-truth kinematics (only phantom datasets made "
                "by this version have them); regenerate the phantom dataset."
            )
        truth = read_json(truth_path)
        items = sorted(items, key=lambda it: int(it["frame"]))
        labels = (read_label(it["label"])[channels or slice(None)] for it in items)
        row = {"labels": compare(_measure(labels, tasks, truth["fps"]), truth)}
        if predictions is not None:
            paths = [Path(predictions) / study / f"{int(it['frame']):04d}.nii.gz" for it in items]
            missing = [str(p) for p in paths if not p.is_file()]
            if missing:
                raise FileNotFoundError(
                    f"{len(missing)} predicted masks are missing, e.g. {missing[0]}; run `inferring` on the dataset's "
                    "images with this output folder first."
                )
            steady = steady_masks((read_label(p) for p in paths), steady_radius(truth["fps"], steady_seconds))
            row["predicted"] = compare(_measure(steady, tasks, truth["fps"]), truth)
        studies[study] = row
    sources = ["labels"] + (["predicted"] if predictions is not None else [])
    fps = read_json(truth_dir / f"{sorted(studies)[0]}.json")["fps"]
    summary = {s: summarise([r[s] for r in studies.values()]) for s in sources}
    return {"datalist": str(datalist), "split": split, "fps": fps, "steady_seconds": steady_seconds or 0,
            "studies": studies, "summary": summary}  # fmt: skip


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and max absolute error per measure and per event over studies, and how many were detected."""
    detected = [r for r in rows if r["detected"]]
    out: dict[str, Any] = {"studies": len(rows), "detected": len(detected), "measures": {}, "events": {}}
    for name in MEASURES:
        errors = np.array([r["measures"][name] for r in detected if r["measures"][name] is not None], float)
        out["measures"][name] = _stats(errors)
    pooled = []
    for name in EVENTS:
        errors = np.array([r["events"][name] for r in detected if r["events"][name] is not None], float)
        out["events"][name] = _stats(errors)
        pooled += errors.tolist()
    out["events"]["all"] = _stats(np.array(pooled, float))
    out["inversion_agreement"] = float(np.mean([r["inversion_agrees"] for r in detected])) if detected else math.nan
    return out


def _stats(errors: np.ndarray) -> dict[str, float]:
    if len(errors) == 0:
        return {"n": 0, "mean_error": math.nan, "mean_abs": math.nan, "max_abs": math.nan}
    return {"n": int(len(errors)), "mean_error": float(errors.mean()), "mean_abs": float(np.abs(errors).mean()),
            "max_abs": float(np.abs(errors).max())}  # fmt: skip


def _cell(stats: dict[str, float], digits: int) -> str:
    if not stats["n"]:
        return "-"
    return f"{stats['mean_abs']:.{digits}f} ({stats['max_abs']:.{digits}f})"


def _verdict(stats: dict[str, float], target: float | None) -> str:
    if target is None or not stats["n"]:
        return ""
    return " ✓" if stats["max_abs"] <= target else " ✗"


def to_markdown(report: dict[str, Any]) -> str:
    """A table: per measure and event, mean |error| (max |error|) on ground-truth masks and predicted masks, with
    the targets; ✓ when the largest error is within the target."""
    summary = report["summary"]
    sources = list(summary)
    head = "| quantity | unit | target (a) | (a) ground-truth masks | target (b) | (b) predicted masks |"
    lines = [
        f"Split `{report['split']}` of `{report['datalist']}` ({summary['labels']['studies']} studies, "
        f"{report['fps']:.3g} frames/s); swallows found: "
        + ", ".join(f"{s} {summary[s]['detected']}/{summary[s]['studies']}" for s in sources)
        + (f"; predicted masks steadied over {report['steady_seconds']:g} s" if "predicted" in sources else "")
        + ". Cells: mean |error| (max |error|) over studies; ✓ = max within the target.",
        "",
        head if "predicted" in sources else head.rsplit(" target (b)", 1)[0],
        "|---|---|---|---|---|---|" if "predicted" in sources else "|---|---|---|---|",
    ]
    rows = [(name, _unit(name), TARGETS.get(name), "measures") for name in MEASURES]
    rows += [(f"event {name}", "frames", TARGETS["events"], "events") for name in EVENTS]
    rows += [("all events", "frames", TARGETS["events"], "events")]
    for label, unit, target, kind in rows:
        key = label.replace("event ", "") if kind == "events" and label != "all events" else label
        key = "all" if label == "all events" else key
        digits = 1 if kind == "events" else (3 if key == "pharyngeal_constriction_ratio" else 2)
        cells = [label, unit]
        for k, source in enumerate(sources):
            stats = summary[source][kind][key]
            t = None if target is None else target[k]
            cells += ["-" if t is None else f"<= {t:g}", _cell(stats, digits) + _verdict(stats, t)]
        lines.append("| " + " | ".join(cells) + " |")
    agreement = ", ".join(f"{s} {summary[s]['inversion_agreement']:.0%}" for s in sources)
    lines += ["", f"Epiglottis inversion category (none / partial / complete) agrees with the truth: {agreement}."]
    return "\n".join(lines) + "\n"
