"""What a phantom study did: its swallow kinematics per frame and per swallow, from the simulator's own geometry.

The definitions are those of :mod:`vfss_agglo_bundle.kinematics` (docs/kinematics.md), applied to the exact
polygons the simulator drew instead of to masks, and to its own states (hyoid lift, sphincter phases). Measured
on the ground-truth masks, the kinematics differ from these values only by what masks lose (pixels, the field's
edge); on predicted masks, also by the segmentation's errors.

Units: lengths in %(C2-4) (100 = the C2-C4 anterior-inferior corner distance ``L``), areas in %(C2-4)^2
(pixels / L^2 x 10^4), times in seconds, angles in degrees from the spine's "up"; positions in the spine frame
(origin C4's anterior-inferior corner, ``x`` anterior, ``y`` towards C2). Pixel positions (``*_px``) are ``(x, y)``
= (column, row) in the frame.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from vfss_agglo_bundle.kinematics.swallow_events import INVERSION, ONSET, PEAK, PLATEAU, first_index
from vfss_agglo_bundle.phantom.anatomy import DEFAULT_CONFIG, PhantomConfig, StudyAnatomy, sample_anatomy
from vfss_agglo_bundle.phantom.render import field_mask, rasterise, to_pixels
from vfss_agglo_bundle.phantom.scene import Scene, build_scene
from vfss_agglo_bundle.phantom.timing import swallow_state

__all__ = ["SUPERSAMPLING", "study_truth"]

SUPERSAMPLING = 4  # area cells per frame pixel along each axis


def _extreme(points: np.ndarray, direction: np.ndarray) -> np.ndarray:
    return points[int(np.argmax(points @ direction))]


def _axes(c4: np.ndarray, c2: np.ndarray, front: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    up = (c2 - c4) / np.linalg.norm(c2 - c4)
    anterior = np.array([-up[1], up[0]])
    return up, anterior if (front - c4) @ anterior > 0 else -anterior


def _spine_frame(scene: Scene) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """C2 and C4 anterior-inferior corners of the outlines as drawn, and the axes (up, anterior); canonical units."""
    c2_outline, c4_outline = scene.labels["c2"][0], scene.labels["c4"][0]
    front = scene.landmarks["hyoid_body"].mean(0)
    up, anterior = _axes(c4_outline.mean(0), c2_outline.mean(0), front)
    for _ in range(2):
        c2, c4 = _extreme(c2_outline, anterior - up), _extreme(c4_outline, anterior - up)
        up, anterior = _axes(c4, c2, front)
    return c2, c4, up, anterior


def _fine_masks(
    groups: Sequence[Sequence[np.ndarray]], a: StudyAnatomy, t: float, size: int
) -> tuple[list[np.ndarray], float]:
    """Rasterise groups of canonical polygons on a grid ``SUPERSAMPLING`` x finer than the frame, keeping only cells
    inside the frame and its exposed field (what an annotator can draw). Returns one bool grid per group (all on
    the same grid) and the cell side in frame pixels."""
    polys = [to_pixels(p, a, t, size) for group in groups for p in group]
    if not polys:
        return [np.zeros((0, 0), bool) for _ in groups], 1.0 / SUPERSAMPLING
    lo = np.floor(np.min([p.min(0) for p in polys], axis=0)).clip(-0.5, size - 0.5)
    hi = np.ceil(np.max([p.max(0) for p in polys], axis=0)).clip(-0.5, size - 0.5)
    side = int(np.ceil((hi - lo).max() * SUPERSAMPLING)) + 1
    cols, rows = np.meshgrid(np.arange(side), np.arange(side))
    x, y = lo[0] + (cols + 0.5) / SUPERSAMPLING, lo[1] + (rows + 0.5) / SUPERSAMPLING
    visible = field_mask(a, x, y, size)[0] & (x >= -0.5) & (y >= -0.5) & (x <= size - 0.5) & (y <= size - 0.5)
    grids = []
    for group in groups:
        grid = np.zeros((side, side), bool)
        for poly in group:
            fine_poly = (to_pixels(poly, a, t, size) - lo) * SUPERSAMPLING - 0.5
            r0, band = rasterise(fine_poly, side)
            grid[r0 : r0 + band.shape[0]] |= band
        grids.append(grid & visible)
    return grids, 1.0 / SUPERSAMPLING


def _principal_axis(polygon: np.ndarray) -> np.ndarray:
    """Unit long axis of a simple polygon's area (eigenvector of its second moments, by Green's theorem)."""
    x, y = polygon[:, 0], polygon[:, 1]
    x1, y1 = np.roll(x, -1), np.roll(y, -1)
    cross = x * y1 - x1 * y
    area = cross.sum() / 2
    cx, cy = ((x + x1) * cross).sum() / (6 * area), ((y + y1) * cross).sum() / (6 * area)
    ixx = ((x**2 + x * x1 + x1**2) * cross).sum() / (12 * area) - cx**2
    iyy = ((y**2 + y * y1 + y1**2) * cross).sum() / (12 * area) - cy**2
    ixy = ((x * y1 + 2 * x * y + 2 * x1 * y1 + x1 * y) * cross).sum() / (24 * area) - cx * cy
    values, vectors = np.linalg.eigh(np.array([[ixx, ixy], [ixy, iyy]]))
    return vectors[:, int(np.argmax(values))]


def _frame_truth(a: StudyAnatomy, t: float, size: int) -> dict[str, Any]:
    """One frame's truth: spine-frame points in canonical units, areas in frame pixels^2, states."""
    scene = build_scene(a, t)
    c2, c4, up, anterior = _spine_frame(scene)
    length = float(np.linalg.norm(c2 - c4))

    def spine(p: np.ndarray) -> np.ndarray:
        return np.array([(p - c4) @ anterior, (p - c4) @ up]) / length * 100

    def depth(points: np.ndarray) -> np.ndarray:
        return (points - c4) @ -up / length * 100

    hyoid = _extreme(scene.landmarks["hyoid_body"], anterior - up)
    gonion = _extreme(scene.labels["mandible"][0], -anterior - up)
    bolus = scene.labels["bolus"]
    (pharynx, bolus_grid), cell = _fine_masks([scene.labels["pharynx"], bolus], a, t, size)
    base, tip = scene.landmarks["epiglottis_axis"]
    axis = _principal_axis(scene.labels["epiglottis"][0])
    axis = axis if (tip - base) @ axis > 0 else -axis  # directed from base to tip
    pixels = lambda p: to_pixels(p[None], a, t, size)[0].tolist()  # noqa: E731
    bolus_points = np.concatenate(bolus) if bolus else np.zeros((0, 2))
    return {
        "t": t,
        "c2_px": pixels(c2),
        "c4_px": pixels(c4),
        "hyoid_px": pixels(hyoid),
        "length_px": float(np.linalg.norm(np.subtract(pixels(c2), pixels(c4)))),
        "hyoid": spine(hyoid),
        "gonion_depth": float(depth(gonion[None])[0]),
        "bolus_head": float(depth(bolus_points).max()) if bolus else math.nan,
        "bolus_tail": float(depth(bolus_points).min()) if bolus else math.nan,
        "pharynx_area_px": float(pharynx.sum() * cell**2),
        "bolus_in_pharynx_px": float((pharynx & bolus_grid).sum() * cell**2) if bolus else 0.0,
        "epiglottis_angle": float(np.degrees(np.arccos(np.clip(axis @ up, -1.0, 1.0)))),
        "ues_width": 2 * scene.landmarks["ues_half"] / length * 100,
        "ues_opening": float(scene.landmarks["ues_opening"]),
        "ues_phases": scene.landmarks["ues_phases"],
        "lift": float(scene.landmarks["lift"]),
    }


def study_truth(seed: int, cfg: PhantomConfig = DEFAULT_CONFIG) -> dict[str, Any]:
    """The ground truth of ``simulate_study(seed, cfg)``: per-frame signals and the swallow's events and measures.

    Returns a JSON-ready dict: ``fps``, ``units``, ``frames`` (signal -> list over frames; ``None`` for nan) and
    ``swallows`` (one: ``events`` as frame indices, ``measures``) plus the sphincter phases in seconds.
    """
    anatomy = sample_anatomy(np.random.default_rng(seed), cfg)
    phases = np.linspace(0.0, 1.0, cfg.num_frames)
    fps = cfg.fps
    frames = [_frame_truth(anatomy, float(t), cfg.image_size) for t in phases]
    area_scale = lambda f: 1e4 / f["length_px"] ** 2  # noqa: E731  pixels^2 -> %(C2-4)^2
    hyoid = np.stack([f["hyoid"] for f in frames])
    rest_hyoid = hyoid[0]  # the hyoid is at rest when the clip starts (lift 0)
    displacement = np.linalg.norm(hyoid - rest_hyoid, axis=1)
    area = np.array([f["pharynx_area_px"] * area_scale(f) for f in frames])
    in_pharynx = np.array([f["bolus_in_pharynx_px"] * area_scale(f) for f in frames])
    head = np.array([f["bolus_head"] for f in frames])
    angle = np.array([f["epiglottis_angle"] for f in frames])
    width = np.array([f["ues_width"] for f in frames])
    opening, closing = frames[0]["ues_phases"]
    n = len(frames)

    amplitude = float(displacement.max())
    peak = first_index(displacement >= PEAK * amplitude)
    below = np.flatnonzero(displacement[:peak] <= ONSET * amplitude)
    hyb = int(below[-1]) + 1 if len(below) else None
    swallow_rest = first_index(displacement <= ONSET * amplitude, peak + 1)
    bpm = first_index(np.nan_to_num(head, nan=-np.inf) > np.array([f["gonion_depth"] for f in frames]))
    ueso, uesc = first_index(phases >= opening), first_index(phases >= closing)
    end = swallow_rest if swallow_rest is not None else n - 1
    start = hyb if hyb is not None else 0
    rest_frames = [i for i in range(n) if frames[i]["lift"] == 0.0 and (hyb is None or i < hyb)] or [0]
    rest_area = float(np.median(area[rest_frames]))
    span = area[start : end + 1]
    constriction = start + int(np.flatnonzero(span <= span.min() + PLATEAU * rest_area)[0])
    speed = np.abs(np.gradient(displacement, 1.0 / fps)) if n > 1 else np.zeros(n)  # sampled, not smoothed
    lifts = np.array([f["lift"] for f in frames])
    per_lift = displacement[np.argmax(lifts)] / max(lifts.max(), 1e-9)  # the hyoid moves rigidly with the lift
    fine_t = np.linspace(0.0, 1.0, 2001)  # continuous speed from the simulator's lift curve
    fine_disp = np.array([swallow_state(anatomy, t)[0] for t in fine_t]) * per_lift
    max_speed = float(np.abs(np.gradient(fine_disp, fine_t * cfg.duration_s)).max())
    events = {"BPM": bpm, "HYB": hyb, "hyoid_peak": peak, "UESO": ueso, "UESC": uesc,
              "max_constriction": constriction, "swallow_rest": swallow_rest}  # fmt: skip
    max_angle = float(angle[bpm if bpm is not None else 0 : end + 1].max())

    def seconds(a: str, b: str) -> float:
        return math.nan if events[a] is None or events[b] is None else (events[b] - events[a]) / fps

    measures = {
        "stage_transition_s": seconds("BPM", "HYB"),
        "hyb_to_ueso_s": seconds("HYB", "UESO"),
        "ues_opening_duration_s": seconds("UESO", "UESC"),
        "pharyngeal_transit_s": seconds("BPM", "UESC"),
        "hyoid_peak_x": float(hyoid[peak, 0]),
        "hyoid_peak_y": float(hyoid[peak, 1]),
        "hyoid_peak_displacement": float(displacement[peak]),
        "hyoid_rest_to_peak_x": float(hyoid[peak, 0] - rest_hyoid[0]),
        "hyoid_rest_to_peak_y": float(hyoid[peak, 1] - rest_hyoid[1]),
        "hyoid_max_speed": float(speed[start : end + 1].max()),  # what the video's frames can show
        "hyoid_max_speed_continuous": max_speed,  # the simulator's, higher at low frame rates
        "pharyngeal_area_rest": rest_area,
        "pharyngeal_constriction_ratio": float(area[constriction] / rest_area),
        "ues_max_width": float(width[ueso : (uesc or n - 1) + 1].max()) if ueso is not None else math.nan,
        "epiglottis_max_angle": max_angle,
        "epiglottis_inversion": next((name for limit, name in INVERSION if max_angle >= limit), "none"),
        "residue_area": float(in_pharynx[end]),
    }
    signals = {
        "time_s": (phases * cfg.duration_s).tolist(),
        "c2_px": [f["c2_px"] for f in frames],
        "c4_px": [f["c4_px"] for f in frames],
        "hyoid_px": [f["hyoid_px"] for f in frames],
        "length_px": [f["length_px"] for f in frames],
        "hyoid_x": hyoid[:, 0].tolist(),
        "hyoid_y": hyoid[:, 1].tolist(),
        "hyoid_displacement": displacement.tolist(),
        "hyoid_speed": speed.tolist(),
        "pharynx_area": area.tolist(),
        "bolus_in_pharynx": in_pharynx.tolist(),
        "bolus_head": _none_for_nan(head),
        "bolus_tail": _none_for_nan(np.array([f["bolus_tail"] for f in frames])),
        "gonion_depth": [f["gonion_depth"] for f in frames],
        "epiglottis_angle": angle.tolist(),
        "ues_open": [f["ues_opening"] > 0 for f in frames],
        "ues_width": width.tolist(),
    }
    return {
        "seed": seed,
        "fps": fps,
        "num_frames": n,
        "image_size": cfg.image_size,
        "units": {"length": "%(C2-4)", "area": "%(C2-4)^2", "time": "s", "angle": "degrees"},
        "frames": signals,
        "swallows": [
            {
                "events": events,
                "measures": {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in measures.items()},
                "ues_open_s": opening * cfg.duration_s,
                "ues_close_s": closing * cfg.duration_s,
            }
        ],  # fmt: skip
    }


def _none_for_nan(values: np.ndarray) -> list[float | None]:
    return [None if math.isnan(v) else float(v) for v in values]
