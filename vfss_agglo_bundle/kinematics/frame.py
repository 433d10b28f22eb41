"""One frame's geometry from its masks: the spine frame of reference and the raw points the measures need.

Everything here is in pixels of the frame's own size (``x`` = column, ``y`` = row), one frame at a time, so that a
video can be measured while it is segmented and only these few numbers are kept per frame.

Spine frame of reference (ASPEKT, Steele Swallowing Lab): origin at C4's anterior-inferior corner, ``y`` axis
towards C2's anterior-inferior corner ("up"), ``x`` axis perpendicular to it, pointing anterior (towards the
pharynx and the face, whichever way the patient faces). A vertebra's anterior-inferior corner is the mask pixel
furthest along ``anterior - up`` (Steele et al.'s corner, found on the mask). The axis is found twice: first from
the C4 and C2 centroids, then from the corners found with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["HYOID_BAND", "FrameGeometry", "frame_geometry"]

MIN_SPINE_PX = 2.0  # C2 and C4 corners closer than this (pixels) give no spine frame
HYOID_BAND = 0.3  # the hyoid point averages the pixels within 0.3 x sqrt(area) of its furthest along anterior - up


def _points(mask: np.ndarray) -> np.ndarray:
    """``[N, 2]`` float (x, y) of a mask's pixels."""
    rows, cols = np.divmod(np.flatnonzero(mask), mask.shape[1])  # row-major like np.nonzero, ~8x faster in 2-D
    return np.stack([cols, rows], axis=1).astype(np.float64)


def _extreme(points: np.ndarray, direction: np.ndarray, tolerance: float = 0.5) -> np.ndarray:
    """The point furthest along ``direction``: the mean of the points within ``tolerance`` pixels of the furthest
    (so a flat edge gives its middle, and a small mask's point moves by less than a pixel between frames)."""
    score = points @ direction
    best = score >= score.max() - tolerance
    return points[best].mean(0)


@dataclass
class FrameGeometry:
    """What one frame contributes to the kinematics (pixel coordinates; ``None`` where a structure is missing).

    Attributes:
        areas: task -> mask area in pixels (0 when absent).
        c2, c4: anterior-inferior corners of C2 and C4; c2_centroid, c4_centroid: their masks' centroids.
        up, anterior: unit axes of the spine frame (``None`` without C2 and C4).
        hyoid: the hyoid's anterior-inferior point: hyoid_corner (its furthest pixels along ``anterior - up``) on
            one frame; over a video, hyoid_band (the mean of the pixels in a band ``HYOID_BAND`` x sqrt(area) deep,
            steadier) plus its median offset to the corner (``kinematics.measures.stabilise_landmarks``).
        gonion: the mandible's posterior-inferior point (the angle of the jaw); gonion_depth: its depth (pixels
            along ``-up`` from this frame's C4 corner, like the bolus depths).
        bolus_head, bolus_tail: depths (pixels along ``-up`` from the C4 corner) of the bolus's lowest and highest
            pixel; bolus_in_pharynx: bolus pixels in the pharynx (in its mask, or within its extent).
        pharynx_area: pharyngeal area with the bolus in it: pharynx pixels, and bolus pixels outside the pharynx
            mask but within its depth and anterior-posterior extent (for tools whose pharynx mask leaves it out).
        ues_depth: depth of the pharynx's inferior end (the upper oesophageal sphincter level).
        ues_width: width along ``anterior`` of the pharynx and bolus pixels in the band just above ``ues_depth``.
        bolus_below_ues: bolus pixels deeper than ``ues_depth``; bolus_at_ues: bolus pixels in the band just above it.
        epiglottis_angle: degrees between the epiglottis's long (principal) axis, directed from its base (the end
            nearer the hyoid) to its tip, and ``up`` (0 upright, 180 pointing down).
    """

    areas: dict[str, int]
    c2: np.ndarray | None = None
    c4: np.ndarray | None = None
    c2_centroid: np.ndarray | None = None
    c4_centroid: np.ndarray | None = None
    up: np.ndarray | None = None
    anterior: np.ndarray | None = None
    hyoid: np.ndarray | None = None
    hyoid_corner: np.ndarray | None = None
    hyoid_band: np.ndarray | None = None
    gonion: np.ndarray | None = None
    gonion_depth: float | None = None
    bolus_head: float | None = None
    bolus_tail: float | None = None
    bolus_in_pharynx: int = 0
    pharynx_area: int = 0
    ues_depth: float | None = None
    ues_width: float | None = None
    bolus_below_ues: int = 0
    bolus_at_ues: int = 0
    epiglottis_angle: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def length(self) -> float | None:
        """C2-C4 corner distance in pixels (the anatomical scalar of this frame)."""
        return None if self.c2 is None or self.c4 is None else float(np.linalg.norm(self.c2 - self.c4))

    def to_spine(self, point: np.ndarray | None) -> np.ndarray | None:
        """Pixel point -> ``(x anterior, y up)`` in pixels from the C4 corner."""
        if point is None or self.up is None:
            return None
        offset = np.asarray(point, dtype=np.float64) - self.c4
        return np.array([offset @ self.anterior, offset @ self.up])


def _axes(c4: np.ndarray, c2: np.ndarray, front: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    up = (c2 - c4) / max(np.linalg.norm(c2 - c4), 1e-9)
    anterior = np.array([-up[1], up[0]])
    if front is not None and (front - c4) @ anterior < 0:  # anterior points to the soft tissue in front
        anterior = -anterior
    return up, anterior


def frame_geometry(masks: np.ndarray, tasks: Sequence[str], band: float = 0.04) -> FrameGeometry:
    """The geometry of one frame.

    Args:
        masks: ``[K, H, W]`` binary masks in ``tasks`` order, at the frame's own size.
        tasks: task names; the ones used are c2, c4, hyoid, mandible, bolus, pharynx, epiglottis (any may be
            missing from the list or empty in the frame).
        band: height of the sphincter band as a fraction of the C2-C4 distance.
    """
    masks = np.asarray(masks) > 0
    index = {t: i for i, t in enumerate(tasks)}
    get = {t: masks[index[t]] for t in tasks}
    geometry = FrameGeometry(areas={t: int(np.count_nonzero(m)) for t, m in get.items()})
    present = {t for t, area in geometry.areas.items() if area > 0}
    if not {"c2", "c4"} <= present:
        geometry.notes.append("no C2 or C4 in this frame: no spine frame of reference")
        return geometry
    c2_points, c4_points = _points(get["c2"]), _points(get["c4"])
    front = None
    for name in ("pharynx", "hyoid", "mandible"):
        if name in present:
            front = _points(get[name]).mean(0)
            break
    geometry.c2_centroid, geometry.c4_centroid = c2_points.mean(0), c4_points.mean(0)
    up, anterior = _axes(geometry.c4_centroid, geometry.c2_centroid, front)
    for _ in range(2):  # the corners with the centroid axis, then again with the corner axis
        corner = anterior - up
        c2, c4 = _extreme(c2_points, corner), _extreme(c4_points, corner)
        up, anterior = _axes(c4, c2, front)
    if np.linalg.norm(c2 - c4) < MIN_SPINE_PX:
        geometry.notes.append("C2 and C4 coincide in this frame: no spine frame of reference")
        return geometry
    geometry.c2, geometry.c4, geometry.up, geometry.anterior = c2, c4, up, anterior
    length = geometry.length
    depth = lambda p: (p - c4) @ -up  # noqa: E731  pixels below the C4 corner along the spine

    if "hyoid" in present:
        hyoid, direction = _points(get["hyoid"]), (anterior - up) / np.sqrt(2)
        geometry.hyoid_corner = _extreme(hyoid, direction)
        geometry.hyoid_band = _extreme(hyoid, direction, HYOID_BAND * np.sqrt(len(hyoid)))
        geometry.hyoid = geometry.hyoid_corner
    if "mandible" in present:
        geometry.gonion = _extreme(_points(get["mandible"]), -anterior - up)
        geometry.gonion_depth = float(depth(geometry.gonion))
    bolus = get["bolus"] if "bolus" in present else None
    if bolus is not None:
        d = depth(_points(bolus))
        geometry.bolus_head, geometry.bolus_tail = float(d.max()), float(d.min())
    if "pharynx" in present:
        pharynx = get["pharynx"]
        ph_points = _points(pharynx)
        ph_depth, ph_across = depth(ph_points), ph_points @ anterior
        top, ues = ph_depth.min(), ph_depth.max()
        lumen_points = ph_points
        if bolus is not None:  # bolus drawn outside the pharynx mask but within its extent counts as lumen
            geometry.bolus_in_pharynx = int((pharynx & bolus).sum())
            extra = _points(bolus & ~pharynx)
            d, x = depth(extra), extra @ anterior
            inside = (d >= top) & (d <= ues) & (x >= ph_across.min()) & (x <= ph_across.max())
            lumen_points = np.concatenate([ph_points, extra[inside]])
            geometry.bolus_in_pharynx += int(inside.sum())
        lumen_depth = depth(lumen_points)
        geometry.pharynx_area = len(lumen_points)
        geometry.ues_depth = float(ues)
        near = (lumen_depth > ues - band * length) & (lumen_depth <= ues)
        across = lumen_points[near] @ anterior
        geometry.ues_width = float(across.max() - across.min() + 1) if near.any() else 0.0
        if bolus is not None:
            d = depth(_points(bolus))
            geometry.bolus_below_ues = int((d > ues).sum())
            geometry.bolus_at_ues = int(((d > ues - band * length) & (d <= ues)).sum())
    if "epiglottis" in present and geometry.hyoid is not None and geometry.areas["epiglottis"] >= 2:
        points = _points(get["epiglottis"])
        centred = points - points.mean(0)
        axis = np.linalg.svd(centred, full_matrices=False)[2][0]
        along = centred @ axis
        if np.linalg.norm(points[np.argmax(along)] - geometry.hyoid) < np.linalg.norm(
            points[np.argmin(along)] - geometry.hyoid
        ):
            axis = -axis  # from the base (the end nearer the hyoid) to the tip
        geometry.epiglottis_angle = float(np.degrees(np.arccos(np.clip(axis @ up, -1.0, 1.0))))
    elif "epiglottis" in present and geometry.hyoid is None:
        geometry.notes.append("epiglottis without a hyoid: its base end (nearer the hyoid) is unknown, no angle")
    return geometry
