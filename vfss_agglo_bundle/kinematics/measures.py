"""A video's swallow kinematics and timing from its frames' geometry (:mod:`~vfss_agglo_bundle.kinematics.frame`).

Units: lengths in %(C2-4) (pixels / L x 100, L = the median C2-C4 corner distance over the video), areas in
%(C2-4)^2 (pixels / L^2 x 10^4), times in seconds (frames / fps), angles in degrees; millimetres as well only when
``mm_per_px`` is given (fluoroscopic magnification makes DICOM pixel spacing unreliable, so none is assumed).
Positions are in the spine frame of each frame (origin C4's anterior-inferior corner, ``x`` anterior, ``y``
towards C2), so head motion between frames does not move the hyoid. A corner found on one frame's mask is only good
to a pixel, so the landmarks are stabilised over the video (:func:`stabilise_landmarks`): each vertebra is treated as
rigid, its corner's offset from its centroid (in the centroid axes of C4 -> C2) is the median over the frames, and
each frame's corner is its centroid plus that offset; the hyoid point is the mean of its pixels in a band near the
corner plus the median offset from that mean to the corner pixels (in the spine axes).

Events of a swallow (the thresholds are this bundle's choices, in :mod:`vfss_agglo_bundle.kinematics.swallow_events`,
shared with the phantom's truth, and documented in docs/kinematics.md):

- swallow onset: the first of two frames in a row with at least ``SWALLOW_AREA`` %(C2-4)^2 of bolus in the pharynx
  (more than the residue left by the previous swallow plus ``SWALLOW_AREA``); the swallow ends at swallow rest.
- rest: the ``REST_S`` seconds before the onset (moved earlier, before HYB, while the hyoid already moves in them):
  hyoid rest position and pharyngeal area at rest.
- BPM, bolus passing the mandible: first frame whose bolus head is deeper than the mandible's angle (gonion).
- HYB, hyoid burst onset: the frame after the last one before the peak whose hyoid displacement from rest is at
  most ``ONSET`` (10%) of the swallow's maximum displacement (within ``HYOID_WINDOW_S`` of the onset).
- peak hyoid position: first frame with displacement >= ``PEAK`` (95%) of the maximum.
- swallow rest: first frame after the peak with displacement <= ``ONSET`` of the maximum again.
- UESO, sphincter opening: first frame with bolus deeper than the sphincter (the pharynx's deepest point); UESC,
  closure: first frame after it with no bolus in the band just above the sphincter.
- maximum constriction: the first frame from HYB to swallow rest whose pharyngeal area is within ``PLATEAU`` (1%)
  of the rest area of the least area in that span (the first frame of maximum obliteration).
- epiglottis inversion: the largest epiglottis angle in the swallow: complete >= 135 deg, partial 90-135, none < 90.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.signal import savgol_filter
from vfss_agglo_bundle.kinematics.frame import FrameGeometry
from vfss_agglo_bundle.kinematics.swallow_events import INVERSION, ONSET, PEAK, PLATEAU, first_index

__all__ = ["NOT_COMPUTABLE", "UNITS", "analyse", "stabilise_landmarks"]

SWALLOW_AREA = 100.0  # %(C2-4)^2 of bolus in the pharynx (a 10 x 10 %(C2-4) patch)
REST_S = 0.5
REST_PASSES = 4
HYOID_WINDOW_S = 2.5
LENGTH_CV_FLAG = 0.10  # C2-C4 distance varying by more than this (coefficient of variation) is flagged
EVENTS = ("BPM", "HYB", "hyoid_peak", "UESO", "UESC", "max_constriction", "swallow_rest")
MM_MEASURES = ("hyoid_peak_displacement", "hyoid_rest_to_peak_x", "hyoid_rest_to_peak_y", "ues_max_width")

NOT_COMPUTABLE = {
    "penetration_aspiration_scale": "needs the larynx, laryngeal vestibule, vocal folds, trachea and the cough "
    "response, which the 12 masks do not contain",
    "laryngeal_vestibule_closure": "needs the laryngeal vestibule, which the 12 masks do not contain",
}
UNITS = {
    "length": "%(C2-4): pixels / L x 100, L = median C2-C4 anterior-inferior corner distance of the video",
    "area": "%(C2-4)^2: pixels / L^2 x 10^4",
    "time": "s",
    "speed": "%(C2-4)/s",
    "angle": "degrees from the spine's upward axis (0 upright, 180 pointing down)",
    "position": "spine frame of each frame: origin C4 anterior-inferior corner, x anterior, y towards C2",
}


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _centroid_axes(g: FrameGeometry) -> tuple[np.ndarray, np.ndarray]:
    up = (g.c2_centroid - g.c4_centroid) / max(np.linalg.norm(g.c2_centroid - g.c4_centroid), 1e-9)
    anterior = np.array([-up[1], up[0]])
    return up, anterior if anterior @ g.anterior >= 0 else -anterior


def stabilise_landmarks(geometries: Sequence[FrameGeometry]) -> list[FrameGeometry]:
    """The geometries with C2 and C4 corners (and the spine axes) from the vertebrae's centroids plus their median
    corner offsets over the video (rigid vertebrae), every depth (bolus, sphincter, gonion) measured from that
    steadied corner, and the hyoid point from its band mean plus its median offset to the corner pixels; frames
    without C2 or C4 are returned unchanged."""
    spine = [g for g in geometries if g.up is not None]
    if not spine:
        return list(geometries)
    offsets = []
    for g in spine:
        up, anterior = _centroid_axes(g)
        basis = np.stack([anterior, up])  # rows: x anterior, y up
        offsets.append([basis @ (g.c2 - g.c2_centroid), basis @ (g.c4 - g.c4_centroid)])
    median = np.median(np.array(offsets), axis=0)  # [2 (c2, c4), 2 (x, y)]
    out = []
    for g in geometries:
        if g.up is None:
            out.append(g)
            continue
        up, anterior = _centroid_axes(g)
        c2 = g.c2_centroid + median[0, 0] * anterior + median[0, 1] * up
        c4 = g.c4_centroid + median[1, 0] * anterior + median[1, 1] * up
        new_up = (c2 - c4) / max(np.linalg.norm(c2 - c4), 1e-9)
        new_anterior = np.array([-new_up[1], new_up[0]])
        new_anterior = new_anterior if new_anterior @ g.anterior >= 0 else -new_anterior
        shift = float((g.c4 - c4) @ -new_up)  # the frame's depths, re-referenced to the steadied C4 corner
        depths = {
            k: getattr(g, k) + shift for k in ("bolus_head", "bolus_tail", "ues_depth") if getattr(g, k) is not None
        }
        gonion = None if g.gonion is None else float((g.gonion - c4) @ -new_up)
        out.append(
            dataclasses.replace(g, c2=c2, c4=c4, up=new_up, anterior=new_anterior, gonion_depth=gonion, **depths)
        )
    with_hyoid = [g for g in out if g.up is not None and g.hyoid_band is not None]
    if with_hyoid:
        offset = np.median([[(g.hyoid_corner - g.hyoid_band) @ g.anterior, (g.hyoid_corner - g.hyoid_band) @ g.up]
                            for g in with_hyoid], axis=0)  # fmt: skip
        out = [dataclasses.replace(g, hyoid=g.hyoid_band + offset[0] * g.anterior + offset[1] * g.up)
               if g.up is not None and g.hyoid_band is not None else g for g in out]  # fmt: skip
    return out


def _frame_table(geometries: Sequence[FrameGeometry], length: float, tasks: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-frame signals ``[T]`` in normalised units."""
    area_scale = 1e4 / length**2  # px^2 -> %(C2-4)^2
    spine = [g.up is not None for g in geometries]
    table: dict[str, np.ndarray] = {}
    for task in tasks:
        table[f"area_{task}"] = np.array([g.areas.get(task, 0) for g in geometries]) * area_scale
        table[f"present_{task}"] = np.array([g.areas.get(task, 0) > 0 for g in geometries])
    hyoid = np.array([g.to_spine(g.hyoid) if g.hyoid is not None and s else (np.nan, np.nan)
                      for g, s in zip(geometries, spine, strict=True)], dtype=np.float64)  # fmt: skip
    table["hyoid_x"], table["hyoid_y"] = hyoid[:, 0] / length * 100, hyoid[:, 1] / length * 100
    with_pharynx = [s and g.areas.get("pharynx", 0) > 0 for g, s in zip(geometries, spine, strict=True)]
    for key in ("pharynx_area", "bolus_in_pharynx", "bolus_below_ues", "bolus_at_ues"):  # nan without a pharynx
        table[key] = np.array([getattr(g, key) if p else np.nan for g, p in zip(geometries, with_pharynx, strict=True)])
        table[key] = table[key] * area_scale
    for key in ("bolus_head", "bolus_tail", "ues_depth", "ues_width", "gonion_depth"):
        table[key] = np.array([_nan(getattr(g, key)) for g in geometries]) / length * 100
    table["epiglottis_angle"] = np.array([_nan(g.epiglottis_angle) for g in geometries])
    return table


def _smooth(values: np.ndarray, fps: float) -> np.ndarray:
    """Savitzky-Golay smoothing (order 2) over about 0.15 s (an odd number of frames, at least 3: none at all below
    about 23 fps, where 3 frames of order 2 fit exactly; 5 frames at 30 fps), NaNs interpolated first."""
    values = np.asarray(values, dtype=np.float64)
    good = np.isfinite(values)
    if good.sum() < 2:
        return values
    filled = np.interp(np.arange(len(values)), np.flatnonzero(good), values[good])
    window = max(3, int(round(0.15 * fps)) | 1)
    return filled if window > len(values) else savgol_filter(filled, window, min(2, window - 1))


def _median(values: np.ndarray, axis: int | None = None) -> Any:
    finite = np.isfinite(values).any(axis=axis) if axis is not None else np.isfinite(values).any()
    if not np.all(finite):
        return np.full(values.shape[1], np.nan) if axis == 0 else math.nan
    return np.nanmedian(values, axis=axis)


def _swallow(table: dict[str, np.ndarray], start: int, earliest: int, fps: float) -> dict[str, Any]:
    """Events and measures of the swallow whose bolus enters the pharynx at frame ``start``; its rest frames are
    taken no earlier than ``earliest`` (the end of the previous swallow)."""
    n = len(table["hyoid_x"])
    flags: list[str] = []
    rest_len = max(1, int(round(REST_S * fps)))
    hyoid = np.stack([table["hyoid_x"], table["hyoid_y"]], axis=1)
    window_stop = min(n, start + int(round(HYOID_WINDOW_S * fps)) + 1)
    events: dict[str, int | None] = dict.fromkeys(EVENTS)
    rest_end, state = start, None
    for _ in range(REST_PASSES):  # the rest before the bolus onset; earlier while the hyoid moves in it
        frames = list(range(max(earliest, rest_end - rest_len), rest_end)) or [max(earliest, rest_end - 1, 0)]
        centre = _median(hyoid[frames], axis=0)
        moved = np.linalg.norm(hyoid - centre, axis=1)
        window = moved[frames[0] : window_stop]
        if not np.isfinite(window).any():  # no hyoid here: keep the last pass that had one
            state = state or (frames, centre, moved, math.nan, None, None)
            break
        amplitude = float(np.nanmax(window))
        peak = first_index(moved >= PEAK * amplitude, frames[0], window_stop)
        below = np.flatnonzero(moved[frames[0] : peak] <= ONSET * amplitude) + frames[0]
        hyb = int(below[-1]) + 1 if len(below) else None
        state = (frames, centre, moved, amplitude, peak, hyb)
        moving = hyb is None or hyb < rest_end  # the hyoid moves within the rest frames
        if not moving or frames[0] <= earliest:
            break
        rest_end = frames[0] if hyb is None else max(hyb, earliest + 1)
    rest_frames, rest, displacement, amplitude, events["hyoid_peak"], events["HYB"] = state
    if start == 0:
        flags.append("the bolus is in the pharynx in the first frame: rest is taken from that frame")
    if events["hyoid_peak"] is None:
        flags.append("no hyoid in the swallow: no hyoid measures or hyoid events")
    else:
        events["swallow_rest"] = first_index(displacement <= ONSET * amplitude, events["hyoid_peak"] + 1)
        if events["swallow_rest"] is None:
            flags.append("the hyoid does not return to rest in the video")
        if events["HYB"] is None:
            flags.append("the hyoid is already moving in the first frame: no HYB")
    last = max(events["swallow_rest"] if events["swallow_rest"] is not None else n - 1, start)
    head, gonion = table["bolus_head"], table["gonion_depth"]
    past = np.nan_to_num(head, nan=-np.inf) > np.nan_to_num(gonion, nan=np.inf)
    crossing = past & ~np.concatenate([[False], past[:-1]])  # past the jaw's angle now, not in the frame before
    events["BPM"] = first_index(crossing, rest_frames[0] + 1, last + 1)
    if events["BPM"] is None:
        events["BPM"] = first_index(past, rest_frames[0], last + 1)
        if events["BPM"] is not None:
            flags.append("bolus already past the mandible when the swallow starts: BPM is its first frame")
    events["UESO"] = first_index(np.nan_to_num(table["bolus_below_ues"]) > 0, start)
    if events["UESO"] is not None:
        events["UESC"] = first_index(np.nan_to_num(table["bolus_at_ues"], nan=1.0) == 0, events["UESO"] + 1)
        if events["UESC"] is None:
            flags.append("the sphincter does not close behind the bolus in the video")
    else:
        flags.append("no bolus passes the sphincter: no sphincter events")
    first = events["HYB"] if events["HYB"] is not None else start
    area = table["pharynx_area"]
    rest_area = _median(area[rest_frames])
    span = area[first : last + 1]
    if np.isfinite(span).any():
        tolerance = PLATEAU * rest_area if np.isfinite(rest_area) else 0.0
        events["max_constriction"] = first + int(np.flatnonzero(span <= np.nanmin(span) + tolerance)[0])

    def seconds(a: str, b: str) -> float:
        return math.nan if events[a] is None or events[b] is None else (events[b] - events[a]) / fps

    def at(values: np.ndarray, event: str) -> float:
        return math.nan if events[event] is None else float(values[events[event]])

    peak = events["hyoid_peak"]
    speed = np.abs(np.gradient(_smooth(displacement, fps))) * fps if len(displacement) > 1 else displacement * 0
    angle = table["epiglottis_angle"][events["BPM"] if events["BPM"] is not None else start : last + 1]
    max_angle = float(np.nanmax(angle)) if np.isfinite(angle).any() else math.nan
    inversion = None if math.isnan(max_angle) else next((n for limit, n in INVERSION if max_angle >= limit), "none")
    opened = (
        table["ues_width"][events["UESO"] : (events["UESC"] or n - 1) + 1]
        if events["UESO"] is not None
        else np.array([])
    )
    measures = {
        "stage_transition_s": seconds("BPM", "HYB"),  # = swallow reaction time
        "hyb_to_ueso_s": seconds("HYB", "UESO"),
        "ues_opening_duration_s": seconds("UESO", "UESC"),
        "pharyngeal_transit_s": seconds("BPM", "UESC"),
        "hyoid_peak_x": at(hyoid[:, 0], "hyoid_peak"),
        "hyoid_peak_y": at(hyoid[:, 1], "hyoid_peak"),
        "hyoid_peak_displacement": at(displacement, "hyoid_peak"),
        "hyoid_rest_to_peak_x": at(hyoid[:, 0], "hyoid_peak") - float(rest[0]),
        "hyoid_rest_to_peak_y": at(hyoid[:, 1], "hyoid_peak") - float(rest[1]),
        "hyoid_max_speed": float(np.nanmax(speed[first : last + 1])) if peak is not None else math.nan,
        "pharyngeal_area_rest": float(rest_area),
        "pharyngeal_constriction_ratio": at(area, "max_constriction") / rest_area if rest_area else math.nan,
        "ues_max_width": float(np.nanmax(opened)) if np.isfinite(opened).any() else math.nan,
        "epiglottis_max_angle": max_angle,
        "epiglottis_inversion": inversion,
        "residue_area": float(table["bolus_in_pharynx"][last]),
    }
    if events["swallow_rest"] is None:
        flags.append("residue_area is taken at the last frame")
    return {"frames": [start, last], "rest_frames": [rest_frames[0], rest_frames[-1]], "events": events,
            "measures": measures, "flags": flags, "displacement": displacement}  # fmt: skip


def _find_swallows(table: dict[str, np.ndarray], fps: float) -> list[dict[str, Any]]:
    """Swallows one after the other: each starts where the bolus fills the pharynx beyond the last one's residue."""
    inside = np.nan_to_num(table["bolus_in_pharynx"])
    swallows: list[dict[str, Any]] = []
    search, baseline = 0, 0.0
    while search < len(inside) - 1:
        above = inside >= baseline + SWALLOW_AREA
        start = first_index(above[:-1] & above[1:], search)
        if start is None:
            break
        swallow = _swallow(table, start, search, fps)
        swallows.append(swallow)
        end = swallow["frames"][1]
        search, baseline = end + 1, float(inside[end])
    return swallows


def analyse(
    geometries: Sequence[FrameGeometry], tasks: Sequence[str], fps: float | None, mm_per_px: float | None = None
) -> dict[str, Any]:
    """Per-frame signals and per-swallow events and measures of one video.

    Args:
        geometries: one :class:`FrameGeometry` per frame, in order.
        tasks: the task names the masks had.
        fps: frames per second (``None``: times are given in frames and flagged).
        mm_per_px: optional calibration; lengths are then also given in millimetres.

    Returns:
        ``{"frames": {signal: [T] list}, "swallows": [...], "flags": [...], "units": {...}, "not_computable": {...},
        "length_px", "fps", ...}``; a value that cannot be measured is ``nan`` (``None`` for an event frame).
    """
    n = len(geometries)
    flags: list[str] = []
    result: dict[str, Any] = {"units": dict(UNITS), "not_computable": dict(NOT_COMPUTABLE), "swallows": [],
                              "fps": fps, "mm_per_px": mm_per_px, "num_frames": n}  # fmt: skip
    if fps is None:
        flags.append("no frame rate (fps) given: times are in frames, not seconds")
        result["units"]["time"], result["units"]["speed"] = "frames", "%(C2-4)/frame"
    fps_used = float(fps) if fps else 1.0
    geometries = stabilise_landmarks(geometries)
    lengths = np.array([_nan(g.length) for g in geometries])
    if not np.isfinite(lengths).any():
        flags.append("no frame has both C2 and C4: the normalised measures (%(C2-4)) need them; only mask areas in "
                     "pixels are given")  # fmt: skip
        frames = {f"area_px_{t}": [g.areas.get(t, 0) for g in geometries] for t in tasks}
        result.update(frames=frames, flags=flags, length_px=None)
        return result
    length = float(np.nanmedian(lengths))
    cv = float(np.nanstd(lengths) / length)
    missing = int((~np.isfinite(lengths)).sum())
    if cv > LENGTH_CV_FLAG:
        flags.append(f"the C2-C4 distance varies by {100 * cv:.0f}% over the video (segmentation or pose change)")
    if missing:
        flags.append(f"{missing} of {n} frames have no C2 or C4: their spine-frame measures are nan")
    table = _frame_table(geometries, length, tasks)
    swallows = _find_swallows(table, fps_used)
    if not swallows:
        flags.append("no swallow: the bolus never fills the pharynx")
    displacement = swallows[0].pop("displacement") if swallows else np.full(n, math.nan)
    for swallow in swallows[1:]:
        swallow.pop("displacement")
    for swallow in swallows:
        if mm_per_px is not None:
            for key in MM_MEASURES:
                swallow["measures"][f"{key}_mm"] = swallow["measures"][key] * length / 100 * mm_per_px
    table["hyoid_displacement"] = displacement  # from the first swallow's rest
    table["hyoid_speed"] = np.abs(np.gradient(_smooth(displacement, fps_used))) * fps_used if n > 1 else displacement
    table["length_px"] = lengths
    result.update(frames={k: v.tolist() for k, v in table.items()}, swallows=swallows, flags=flags,
                  length_px=length, length_cv=cv)  # fmt: skip
    return result
