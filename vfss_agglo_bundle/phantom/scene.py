"""One frame of a phantom study as polygons in canonical normalised coordinates: the labelled outlines and the
attenuation layers the renderer sums, at swallow phase ``t``.

:func:`build_scene` draws the neck in steps, in this order: soft tissue, skull, spine, pharynx and bolus, larynx
and cartilage, epiglottis and residue, hyoid, face and teeth, extras (dots, lines, ruler, coin). Rendering sums
each layer's polygons in float32 in list order, so the order of the steps and of their appends is part of the
output's bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from vfss_agglo_bundle.phantom.anatomy import (
    KNOWN_STRUCTURES,
    PHARYNX_END,
    PHARYNX_ENTRY,
    UES_RAMP,
    UES_TOP,
    VERTEBRAE,
    StudyAnatomy,
)
from vfss_agglo_bundle.phantom.shapes import (
    ATLAS,
    ATLAS_ARCH,
    AXIS,
    BODY,
    MANDIBLE,
    SKIN,
    VERTEBRA,
    bezier,
    ellipse,
    resample,
    rotation,
    smooth,
    tube,
)
from vfss_agglo_bundle.phantom.timing import bolus_extent, constriction_state, plateau, swallow_state, ues_phases

__all__ = ["Scene", "build_scene"]

_UP_FORWARD = np.array([-0.6, -0.8])  # canonical "up and forward": where the hyoid and larynx rise


@dataclass
class Scene:
    """Canonical-space polygons of one frame: labelled outlines and attenuation layers ``(polygon, value)``."""

    labels: dict[str, list[np.ndarray]] = field(default_factory=lambda: {name: [] for name in KNOWN_STRUCTURES})
    tissue: list[tuple[np.ndarray, float]] = field(default_factory=list)  # smooth thickness, low resolution, blurred
    bone: list[tuple[np.ndarray, float]] = field(default_factory=list)  # cortical rim and trabecular texture added
    air: list[tuple[np.ndarray, float]] = field(default_factory=list)
    barium: list[tuple[np.ndarray, float]] = field(default_factory=list)
    metal: list[tuple[np.ndarray, float]] = field(default_factory=list)
    # what the kinematics ground truth needs beyond the labels (canonical coordinates): "hyoid_body" polygon,
    # "epiglottis_axis" [2, 2] base and tip, "ues_half" (half width at the sphincter), states "lift", "tip",
    # "constriction", "ues_opening" in [0, 1] and "ues_phases" (opening, closing)
    landmarks: dict[str, object] = field(default_factory=dict)


class _SpineCurve(NamedTuple):
    """Quadratic curve along the front of the vertebral bodies: level 0 is the top of C1, 1 the bottom of C7."""

    top: np.ndarray  # [2]
    control: np.ndarray  # [2]
    bottom: np.ndarray  # [2]

    def at(self, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Points [N, 2] and unit "down" tangents [N, 2] at spine ``levels`` [N] (beyond [0, 1] extrapolates)."""
        return bezier(self.top, self.control, self.bottom, levels)


@dataclass
class _Pharynx:
    """The pharyngeal lumen sampled at spine levels from the nasopharynx to the sphincter."""

    levels: np.ndarray  # [L] spine levels
    down: np.ndarray  # [L, 2] the spine's unit "down" there
    line: np.ndarray  # [L, 2] centreline
    half: np.ndarray  # [L] half width (the bolus stretches it, the sphincter opens it)
    constriction: float  # state in [0, 1] (timing.constriction_state)


class _BolusPath(NamedTuple):
    """The bolus's path from the mouth over the tongue base, down the pharynx into the oesophagus below the field."""

    points: np.ndarray  # [M, 2] at even arc length
    arc: np.ndarray  # [M] arc length of each point
    half: np.ndarray  # [M] the bolus's half width at each point when it is there
    oral_len: float  # arc length in the mouth
    ues_len: float  # arc length to the sphincter
    ues_half: float  # half width of the open sphincter
    entry: int  # index into the pharynx's levels where the path joins it
    pharynx_arc: np.ndarray  # [L - entry] arc length of the pharynx's centreline points from ``entry`` on


class _Throat(NamedTuple):
    """Where the epiglottis and hyoid sit: the pharynx's centreline point at spine level 0.5, the spine's unit up
    and back vectors there."""

    point: np.ndarray  # [2]
    up: np.ndarray  # [2]
    back: np.ndarray  # [2]


def _in_front(down: np.ndarray) -> np.ndarray:
    """Unit "front" vectors [N, 2] (towards the face) of the spine's unit "down" vectors [N, 2]."""
    return -np.stack([down[:, 1], -down[:, 0]], axis=1)


def _with_head(poly: np.ndarray, a: StudyAnatomy) -> np.ndarray:
    """Points [N, 2] of the head (skull, face, jaw) turned by its flexion, about the atlas."""
    pivot = a.spine_top + np.array([-0.02, 0.0])
    return (poly - pivot) @ rotation(a.head_flex).T + pivot


def _soft_tissue(scene: Scene, a: StudyAnatomy) -> None:
    """Body outline, thicker head, shoulder(s), overlapping soft structures in the neck."""
    scene.tissue.append((smooth(SKIN + a.skin_jitter, 2), 1.0))
    scene.tissue.append((_with_head(ellipse(np.array([0.25, 0.05]), (0.55, 0.42), 0.15), a), 0.7))
    scene.tissue.append((_with_head(ellipse(np.array([0.05, 0.50]) + a.face_offset, (0.35, 0.22), -0.1), a), 0.5))
    scene.tissue.append((ellipse(np.array([1.05, 1.12]) + a.skin_jitter[5], (0.32, 0.22), -0.5), 1.6))
    if a.shoulder_density > 0:  # both shoulders as one dark mass; its top edge over C5-C7 or below
        shoulders = ellipse(np.array([0.95, a.shoulder_top + 0.36]), (0.85, 0.36), -0.12, 32)
        scene.tissue.append((shoulders, a.shoulder_density))
    for cu, cv, ru, rv, ang, dens in a.clutter[: len(a.clutter) // 2]:  # first half: soft overlaps in the neck
        scene.tissue.append((ellipse(np.array([cu + 0.25, cv + 0.45]), (2 * ru, 2 * rv), ang), 0.25 * abs(dens)))


def _skull(scene: Scene, a: StudyAnatomy) -> None:
    """Occipital and parietal bone as a band, skull base above the atlas, bone and sinuses in the head."""
    skull_centre = np.array([0.28, -0.02]) + a.skin_jitter[0] * 0.5
    scene.bone.append((_with_head(ellipse(skull_centre, (0.47, 0.27), 0.12, 48), a), 0.35))
    scene.bone.append((_with_head(ellipse(skull_centre + [0.0, -0.008], (0.445, 0.245), 0.12, 48), a), -0.35))
    skull_floor = np.array([[0.40, 0.12], [0.58, 0.10], [0.66, 0.16], [0.55, 0.20], [0.42, 0.19]])
    scene.bone.append((_with_head(smooth(skull_floor, 2), a), 0.45))
    if a.skull_base > 0:  # petrous ridge and mastoid: dense bone above the atlas
        ridge = tube(np.array([[0.28, 0.02], [0.45, 0.07], [0.62, 0.11]]), np.full(3, 0.013))
        scene.bone.append((_with_head(ridge, a), a.skull_base))
        scene.bone.append((_with_head(ellipse(np.array([0.60, 0.13]), (0.06, 0.04), 0.5), a), a.skull_base))
    for cu, cv, ru, rv, ang, dens in a.clutter[len(a.clutter) // 2 :]:  # second half: bone and sinuses in the head
        layer = scene.bone if dens > 0 else scene.air
        layer.append((_with_head(ellipse(np.array([cu, cv]), (ru, rv), ang), a), abs(dens)))


def _spine_curve(a: StudyAnatomy) -> _SpineCurve:
    """The study's lordotic spine curve: ``lordosis`` bows its middle backwards."""
    top, bottom = a.spine_top, a.spine_bottom
    tangent_mid = (bottom - top) / np.linalg.norm(bottom - top)
    back_mid = np.array([tangent_mid[1], -tangent_mid[0]])
    return _SpineCurve(top, 0.5 * (top + bottom) - a.lordosis * back_mid, bottom)


def _vertebrae(scene: Scene, a: StudyAnatomy, spine: _SpineCurve) -> None:
    """Seven vertebrae along the spine curve, each tilted with the local tangent: outline, denser body, facets."""
    origins, tangents = spine.at(a.vertebra_levels)
    for i, name in enumerate(VERTEBRAE):
        template = (ATLAS, AXIS, *[VERTEBRA] * 5)[i]
        height_scale = (0.75, 1.15, 1, 1, 1, 1, 1)[i]
        down = rotation(a.vertebra_jitter[i, 2]) @ tangents[i]
        back = np.array([down[1], -down[0]])
        width = a.vertebra_size[0] * a.vertebra_jitter[i, 0]
        height = a.vertebra_size[1] * a.vertebra_jitter[i, 1] * height_scale
        local = smooth(template, 2)
        outline = origins[i] + local[:, :1] * width * back + local[:, 1:] * height * down
        scene.labels[name].append(outline)
        density = a.vertebra_contrast
        scene.bone.append((outline, 0.25 * density))
        body = smooth(ATLAS_ARCH if i == 0 else BODY, 2)  # denser than the posterior elements
        scene.bone.append((origins[i] + body[:, :1] * width * back + body[:, 1:] * height * down, 0.2 * density))
        if i >= 2 and a.facets:  # the articular pillar (facets) behind the body
            facet = ellipse(np.array([1.45, 0.0]), (0.22, 0.42), 0.3, 12)
            scene.bone.append((origins[i] + facet[:, :1] * width * back + facet[:, 1:] * height * down, 0.12 * density))


def _pharynx_lumen(a: StudyAnatomy, t: float, spine: _SpineCurve) -> _Pharynx:
    """The lumen in front of the spine down to the upper oesophageal sphincter, narrowed by the constriction."""
    levels = np.linspace(0.0, PHARYNX_END, 42)
    spine_front, spine_down = spine.at(levels)
    line = spine_front + _in_front(spine_down) * (a.prevertebral + a.pharynx_width)
    profile = np.interp(levels, [0.0, 0.2, 0.62, 0.74, PHARYNX_END], [0.7, 1.0, 1.0, 0.55, 0.3])
    constriction = constriction_state(a, t)
    half = a.pharynx_width * profile * (1 - a.constriction * constriction)
    return _Pharynx(levels, spine_down, line, half, constriction)


def _bolus_path(a: StudyAnatomy, spine: _SpineCurve, pharynx: _Pharynx) -> _BolusPath:
    """The path mouth -> over the tongue base -> down the pharynx -> oesophagus below the field, and the bolus's
    half width along it (a ball in the mouth; the lumen shapes it after)."""
    oral_path = _with_head(np.array([[0.10, 0.49], [0.20, 0.48], [0.29, 0.47], [0.36, 0.455]]) + a.face_offset, a)
    entry = np.searchsorted(pharynx.levels, PHARYNX_ENTRY)
    oes_levels = np.linspace(PHARYNX_END, 1.35, 12)[1:]
    oes_pts, oes_down = spine.at(oes_levels)
    oes_line = oes_pts + _in_front(oes_down) * (a.prevertebral + 0.6 * a.pharynx_width)
    raw_path = np.concatenate([oral_path, pharynx.line[entry:], oes_line])
    path, arc, raw_arc = resample(raw_path, 0.006)
    oral_len = raw_arc[len(oral_path)]
    ues_len = raw_arc[len(oral_path) + len(pharynx.levels) - entry - 1]
    oral_half, pw = 0.045 * a.bolus_volume, a.pharynx_width
    ues_half = a.ues_opening * pw
    half = np.interp(
        arc,
        [0.0, 0.6 * oral_len, oral_len, ues_len - 0.05, ues_len, arc[-1]],
        [oral_half, oral_half, 0.95 * pw, 0.95 * pw, 0.92 * ues_half, 0.85 * ues_half],
    )
    pharynx_arc = raw_arc[len(oral_path) : len(oral_path) + len(pharynx.levels) - entry]
    return _BolusPath(path, arc, half, oral_len, ues_len, ues_half, entry, pharynx_arc)


def _bolus(scene: Scene, a: StudyAnatomy, t: float, path: _BolusPath, pharynx: _Pharynx) -> None:
    """The bolus where it is along its path (none before it appears or after it has left), with an uneven barium
    edge; the pharynx wall stretches around it and narrows behind its tail (stripping wave)."""
    extent = bolus_extent(a, t, path.oral_len, path.arc[-1])
    if extent is None:
        return
    tail, head = extent
    arc = path.arc
    keep = (arc > tail) & (arc < head)
    s = np.concatenate([[tail], arc[keep], [head]])
    pts = np.stack([np.interp(s, arc, path.points[:, 0]), np.interp(s, arc, path.points[:, 1])], axis=1)
    x = (s - tail) / max(head - tail, 1e-6)
    ragged = 1 + 0.08 * np.sin(90 * s + 7 * t) + 0.05 * np.sin(230 * s - 11 * t)  # uneven barium edge
    half = np.interp(s, arc, path.half) * ragged * np.sqrt(np.clip(1 - np.abs(2 * x - 1) ** 3, 0, 1))
    outline = tube(pts, half)
    scene.labels["bolus"].append(outline)
    scene.barium.append((outline, 2.2))
    ph_arc = path.pharynx_arc
    bolus_half = np.interp(ph_arc, s, half, left=0.0, right=0.0)
    behind = (
        np.exp(-(((ph_arc - tail) / 0.06) ** 2))
        * (ph_arc < tail)
        * plateau(t, a.swallow_onset, a.swallow_onset + a.transit_time, 0.05)
    )
    entry = path.entry
    pharynx.half[entry:] = np.maximum(pharynx.half[entry:] * (1 - 0.55 * behind), 1.08 * bolus_half)


def _pharynx_and_bolus(
    scene: Scene, a: StudyAnatomy, t: float, spine: _SpineCurve
) -> tuple[_Pharynx, float, tuple[float, float]]:
    """The pharynx from the nasopharynx to the upper oesophageal sphincter and the bolus passing through it; the
    sphincter opens while the bolus passes. Returns the pharynx, the sphincter's opening state in [0, 1] and its
    phases (fully open, closing)."""
    pharynx = _pharynx_lumen(a, t, spine)
    path = _bolus_path(a, spine, pharynx)
    phases = ues_phases(a, path.oral_len, path.ues_len, path.arc[-1])
    ues_opening = plateau(t, phases[0] - UES_RAMP, phases[1], UES_RAMP)
    _bolus(scene, a, t, path, pharynx)
    sphincter = pharynx.levels >= UES_TOP
    pharynx.half[sphincter] = np.maximum(pharynx.half[sphincter], path.ues_half * ues_opening)
    outline = tube(pharynx.line, pharynx.half)
    scene.labels["pharynx"].append(outline)
    scene.air.append((outline, 0.2))
    return pharynx, ues_opening, phases


def _larynx(scene: Scene, a: StudyAnatomy, spine: _SpineCurve, lift: float) -> None:
    """Larynx and trachea: an air column in front of the oesophagus, rising with the hyoid; calcified thyroid and
    cricoid cartilage and tracheal rings as rims around it."""
    lx_pts, lx_down = spine.at(np.linspace(0.58, 1.35, 14))
    lx_front = _in_front(lx_down)
    lx_line = (
        lx_pts + lx_front * (a.prevertebral + 2 * a.pharynx_width + 0.035) + 0.7 * lift * a.hyoid_lift * _UP_FORWARD
    )
    lx_half = np.full(len(lx_line), 0.017) * (1 - 0.6 * lift * np.linspace(1, 0, len(lx_line)) ** 4)
    scene.air.append((tube(lx_line, lx_half), 0.16))
    if a.cartilage > 0:
        lx_angle = float(np.arctan2(lx_down[3, 1], lx_down[3, 0]))
        for centre, radii, value in (
            (lx_line[2] - lx_front[2] * 0.012, (0.065, 0.04), 1.0),  # thyroid
            (lx_line[5], (0.022, 0.03), 0.8),  # cricoid
            *[(lx_line[k], (0.008, 0.024), 0.5) for k in range(7, 13)],  # tracheal rings
        ):
            outer, inner = (
                ellipse(centre, radii, lx_angle, 20),
                ellipse(centre, (0.7 * radii[0], 0.7 * radii[1]), lx_angle, 20),
            )
            scene.bone += [(outer, value * a.cartilage), (inner, -value * a.cartilage)]


def _throat(pharynx: _Pharynx) -> _Throat:
    """The pharynx's centreline point and the spine's up and back vectors at spine level 0.5."""
    b_idx = np.searchsorted(pharynx.levels, 0.50)
    down_here = pharynx.down[b_idx]
    return _Throat(pharynx.line[b_idx], -down_here, np.array([down_here[1], -down_here[0]]))


def _epiglottis_and_residue(
    scene: Scene, a: StudyAnatomy, t: float, pharynx: _Pharynx, throat: _Throat, lift: float, tip: float
) -> np.ndarray:
    """The epiglottis, a thin strip from the front wall of the pharynx tipping back and down during the swallow,
    the air pocket in front of it, and barium left in the vallecula and pyriform sinus after the swallow (when the
    study has residue). Returns the epiglottis's axis [2, 2] (base, tip)."""
    up_here, back_here = throat.up, throat.back
    base = throat.point - back_here * 0.6 * a.pharynx_width + lift * a.hyoid_lift * 0.8 * _UP_FORWARD
    tilt = a.epiglottis_tilt[0] + (a.epiglottis_tilt[1] - a.epiglottis_tilt[0]) * tip
    frac = np.linspace(0.0, 1.0, 10)
    bend = tilt + 0.35 * frac  # curls towards the back along its length
    direction = np.cos(bend)[:, None] * up_here + np.sin(bend)[:, None] * back_here
    centreline = base + a.epiglottis_length * np.cumsum(direction, axis=0) / len(frac)
    epiglottis = tube(centreline, a.epiglottis_width * (1.1 - 0.3 * frac) * np.sqrt(1.05 - frac**8))
    scene.labels["epiglottis"].append(epiglottis)
    vallecula = ellipse(centreline[5] - back_here * 0.02, (0.035, 0.013), np.arctan2(up_here[1], up_here[0]))
    scene.air.append((vallecula, 0.2 * (1 - tip)))  # air pocket between tongue base and epiglottis
    scene.bone.append((epiglottis, 0.15))
    if a.residue and t > a.swallow_onset + 0.6 * a.transit_time:
        pyriform = pharynx.line[np.searchsorted(pharynx.levels, 0.74)] + back_here * 0.4 * a.pharynx_width
        for blob in (
            ellipse(centreline[4] - back_here * 0.012, (0.007, 0.014), np.arctan2(up_here[1], up_here[0])),
            ellipse(pyriform, (0.008, 0.012), 0.3),
        ):
            scene.labels["bolus"].append(blob)
            scene.labels["pharynx"].append(blob)  # the recesses it fills are pharyngeal lumen
            scene.barium.append((blob, 1.5))
    return np.stack([centreline[0], centreline[-1]])


def _hyoid(scene: Scene, a: StudyAnatomy, throat: _Throat, lift: float) -> np.ndarray:
    """The hyoid: a small dense body with a greater horn reaching back and up; it moves up and forward with the
    lift. Returns its body's outline [16, 2]."""
    up_here, back_here = throat.up, throat.back
    hyoid_centre = (
        throat.point - back_here * (a.pharynx_width + 0.06) + a.hyoid_offset + lift * a.hyoid_lift * _UP_FORWARD
    )
    hs = a.hyoid_size
    hyoid_body = ellipse(hyoid_centre, (0.02 * hs, 0.012 * hs), 0.4, 16)
    horn = tube(
        np.stack([hyoid_centre + (0.01 + 0.045 * k) * hs * (0.92 * back_here + 0.4 * up_here) for k in (0, 0.5, 1)]),
        np.array([0.0065, 0.005, 0.0035]) * hs,
    )
    scene.labels["hyoid"] += [hyoid_body, horn]
    scene.bone += [(hyoid_body, 0.38), (horn, 0.25)]
    return hyoid_body


def _face(scene: Scene, a: StudyAnatomy, t: float, lift: float) -> None:
    """Mandible (opens slightly while the bolus is taken in), teeth with their fillings, hard palate, tongue and
    oral air."""
    face = a.face_offset
    jaw = a.jaw_opening * plateau(t, a.bolus_start - 0.08, a.swallow_onset - 0.05, 0.06)
    condyle = np.array([0.42, 0.27]) + face
    mandible = ((MANDIBLE + face - condyle) * a.mandible_scale) @ rotation(-jaw).T + condyle
    mandible = _with_head(smooth(mandible, 2), a)
    scene.labels["mandible"].append(mandible)
    scene.bone.append((mandible, 0.5))
    lower_teeth = (np.array([[0.0, 0.54], [0.1, 0.535], [0.2, 0.515]]) + face - condyle) * a.mandible_scale
    lower_teeth = _with_head(lower_teeth @ rotation(-jaw).T + condyle, a)
    scene.bone.append((tube(lower_teeth, np.array([0.022, 0.026, 0.024])), 0.3))
    upper_teeth = _with_head(np.array([[0.0, 0.47], [0.1, 0.465], [0.2, 0.455]]) + face, a)
    scene.bone.append((tube(upper_teeth, np.array([0.024, 0.028, 0.025])), 0.3))
    palate = np.array([[-0.05, 0.435], [0.15, 0.425], [0.33, 0.41]]) + face
    scene.bone.append((tube(_with_head(palate, a), np.array([0.008, 0.008, 0.005])), 0.5))
    scene.tissue.append((_with_head(ellipse(np.array([0.24, 0.50]) + face, (0.16, 0.055), -0.15), a), 0.25))
    oral_air = _with_head(ellipse(np.array([0.22, 0.455]) + face, (0.11, 0.012), -0.08), a)
    scene.air.append((oral_air, 0.1 * (1 - 0.7 * lift)))
    for along, lower, r in a.fillings:  # amalgam fillings on the teeth
        teeth = lower_teeth if lower else upper_teeth
        centre = np.array([np.interp(along, [0, 0.5, 1], teeth[:, k]) for k in (0, 1)])
        scene.metal.append((ellipse(centre, (1.4 * r, r), 0.0, 10), 3.0))


def _extras(scene: Scene, a: StudyAnatomy) -> None:
    """What confuses, unlabelled: dense dots (earrings, skin markers), thin lines (glasses, head holder), a
    radio-opaque ruler with a tick every 1/12 of its length, a calibration coin."""
    for cu, cv, r in a.dense_dots:
        scene.metal.append((_with_head(ellipse(np.array([cu, cv]), (r, r), 0.0, 12), a), 3.0))
    for u0, v0, u1, v1 in a.lines:
        scene.metal.append((tube(np.array([[u0, v0], [u1, v1]]), np.array([0.003, 0.003])), 0.8))
    if a.ruler is not None:
        ru, rv, angle, length = a.ruler
        along, across = np.array([np.sin(angle), np.cos(angle)]), np.array([np.cos(angle), -np.sin(angle)])
        start = np.array([ru, rv])
        scene.metal.append((tube(np.stack([start, start + length * along]), np.array([0.006, 0.006])), 1.2))
        for k in range(13):
            p = start + k * length / 12 * along
            tick = tube(np.stack([p, p + (0.03 if k % 6 == 0 else 0.016) * across]), np.full(2, 0.004))
            scene.metal.append((tick, 1.2))
    if a.coin is not None:
        scene.metal.append((ellipse(a.coin[:2], (a.coin[2], a.coin[2]), 0.0, 24), 2.0))


def build_scene(a: StudyAnatomy, t: float) -> Scene:
    """All polygons of the frame at swallow phase ``t``, in canonical normalised coordinates."""
    scene = Scene()
    lift, tip = swallow_state(a, t)
    _soft_tissue(scene, a)
    _skull(scene, a)
    spine = _spine_curve(a)
    _vertebrae(scene, a, spine)
    pharynx, ues_opening, phases = _pharynx_and_bolus(scene, a, t, spine)
    _larynx(scene, a, spine, lift)
    throat = _throat(pharynx)
    epiglottis_axis = _epiglottis_and_residue(scene, a, t, pharynx, throat, lift, tip)
    hyoid_body = _hyoid(scene, a, throat, lift)
    _face(scene, a, t, lift)
    _extras(scene, a)
    scene.landmarks.update(
        hyoid_body=hyoid_body,
        epiglottis_axis=epiglottis_axis,
        ues_half=float(pharynx.half[-1]),
        lift=lift,
        tip=tip,
        constriction=pharynx.constriction,
        ues_opening=ues_opening,
        ues_phases=phases,
    )
    return scene
