"""Synthetic VFSS studies: lateral head-and-neck fluoroscopy of one swallow, with annotator-style masks.

Geometry lives in normalised image coordinates ``(u, v)`` in ``[0, 1]`` (``u`` to the right, ``v`` down), so any
image size renders the same scene. A study is a canonical neck (face on the left, cervical spine on the right)
posed by a per-study similarity transform, with per-study anatomy, exposure and swallow timing. Each frame is
rendered as an X-ray: attenuation layers (soft tissue, bone, air, barium, metal) -> transmitted intensity ->
quantum (Poisson) noise -> blur -> display gain (air saturates) and gamma -> vignetting -> the exposed field (an
image intensifier's circle or a flat panel's rectangle, inside the collimator shutters; black outside).
Dense is dark: bone mid-grey to dark, barium near black, air bright.

Labels are what an annotator draws: the outline of each structure, clipped to the exposed field (inside the
shutters), one binary channel per task; channels overlap where anatomy does (the bolus lies inside the pharynx). A
vertebra behind the shoulders is still labelled where it is (annotators draw C5-C7 from the spine's line when the
shoulders darken them); burned-in text, rulers and coins are not labelled.

The study itself (settings, anatomy, pose, exposure, timing, phantom v2's domain randomisation) is
:mod:`~vfss_agglo_bundle.phantom.anatomy`; one frame's polygons, :mod:`~vfss_agglo_bundle.phantom.scene`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from vfss_agglo_bundle.data.tasks import DEFAULT_TASKS
from vfss_agglo_bundle.phantom.anatomy import (
    CENTRE,
    DEFAULT_CONFIG,
    PhantomConfig,
    StudyAnatomy,
    phantom_tasks,
    sample_anatomy,
)
from vfss_agglo_bundle.phantom.scene import build_scene
from vfss_agglo_bundle.phantom.shapes import rotation
from vfss_agglo_bundle.phantom.timing import swallow_state

__all__ = ["field_mask", "rasterise", "render_frame", "simulate_study", "to_pixels"]


def rasterise(poly: np.ndarray, size: int) -> tuple[int, np.ndarray]:
    """Pixels whose centres lie inside a polygon [N, 2] given in pixel (x, y): (first row r0, bool band [R, size]).

    Scanline fill with the non-zero winding rule, vectorised over rows and edges.
    """
    x0, y0 = poly[:, 0], poly[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    r0 = max(int(np.ceil(y0.min())), 0)
    r1 = min(int(np.floor(y0.max())), size - 1)
    if r1 < r0 or x0.max() < 0 or x0.min() > size - 1:
        return 0, np.zeros((0, size), dtype=bool)
    rows = np.arange(r0, r1 + 1, dtype=np.float64)[:, None]
    crosses = (rows >= np.minimum(y0, y1)) & (rows < np.maximum(y0, y1))
    dy = np.where(y1 != y0, y1 - y0, 1.0)
    xs = x0 + (rows - y0) * (x1 - x0) / dy
    cols = np.clip(np.ceil(xs), 0, size).astype(np.int64)
    index = np.arange(rows.shape[0])[:, None] * (size + 1) + cols
    winding = np.broadcast_to(np.sign(y1 - y0), crosses.shape)
    counts = np.bincount(index[crosses], weights=winding[crosses], minlength=rows.shape[0] * (size + 1))
    band = np.cumsum(counts.reshape(-1, size + 1)[:, :size], axis=1) != 0
    return r0, band


def to_pixels(points: np.ndarray, a: StudyAnatomy, t: float, size: int) -> np.ndarray:
    """Canonical normalised points [N, 2] -> pixel (x, y) in the image at phase ``t``: posed (the study's
    similarity and motion) in the recording's square, mirrored when the patient faces right, then scaled by
    ``letterbox`` about the centre (a 4:3 or 16:9 recording letterboxed into the square frame)."""
    amp, freq, phase = a.motion[:, 0], a.motion[:, 1], a.motion[:, 2]
    motion = amp * np.sin(2 * np.pi * freq * t + phase)
    posed = (points - CENTRE) @ (a.scale * rotation(a.rotation)).T + CENTRE + a.shift + motion
    if a.mirror:
        posed = posed * np.array([-1.0, 1.0]) + np.array([1.0, 0.0])
    return (CENTRE + a.letterbox * (posed - CENTRE)) * size - 0.5


def field_mask(a: StudyAnatomy, x: np.ndarray, y: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Which pixel centres ``(x, y)`` (arrays of one shape, frame pixels) the X-rays reach, and their distance from
    the field's centre relative to its radius (for the vignette).

    The field is the intensifier's circle (``field_centre``, ``field_radius``) or a flat panel's square, in the
    recording's square before mirroring (a letterboxed recording of a flat panel shows its square image with black
    sides, as a 16:9 capture of a square monitor does); the collimator shutters cut each edge of its bounding box
    by ``shutters`` (left, top, right, bottom, fractions of its side); a letterboxed recording ends at its own top
    and bottom.
    """
    pu = 0.5 + ((np.asarray(x) + 0.5) / size - 0.5) / a.letterbox
    pv = 0.5 + ((np.asarray(y) + 0.5) / size - 0.5) / a.letterbox
    if a.mirror:
        pu = 1.0 - pu
    du, dv = pu - a.field_centre[0], pv - a.field_centre[1]
    if a.flat_panel:
        box = np.array([0.0, 0.0, 1.0, 1.0])
        radius = np.hypot(du, dv) / 0.7
        inside = (pu >= 0) & (pu <= 1)
    else:
        r = a.field_radius
        box = np.array([a.field_centre[0] - r, a.field_centre[1] - r, a.field_centre[0] + r, a.field_centre[1] + r])
        radius = np.hypot(du, dv) / r
        inside = radius <= 1.0
    side = box[2:] - box[:2]
    left, top, right, bottom = a.shutters
    inside &= (pu >= box[0] + left * side[0]) & (pu <= box[2] - right * side[0])
    inside &= (pv >= box[1] + top * side[1]) & (pv <= box[3] - bottom * side[1])
    inside &= (pv >= 0) & (pv <= 1)  # the recording's own top and bottom
    return inside, radius


@functools.lru_cache(maxsize=8)
def _burned_in_text(text: tuple[tuple[int, int, str], ...], size: int, letterbox: float) -> np.ndarray | None:
    """Grey levels [size, size] (0: none) of the text the recorder burned into the corners of its recording (a
    letterboxed recording's corners are inside its band). Pillow's default bitmap font: the same bytes for one
    Pillow version (pinned in constraints.txt)."""
    if not text:
        return None
    from PIL import Image, ImageDraw, ImageFont

    canvas = Image.new("L", (size, size), 0)
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    margin = max(2, size // 64)
    band_top = int(round(size * (1 - letterbox) / 2))
    for corner, grey, lines in text:
        left, top, right, bottom = draw.multiline_textbbox((0, 0), lines, font=font, spacing=1)
        x = margin if corner in (0, 3) else size - margin - (right - left)
        y = band_top + margin if corner in (0, 1) else size - band_top - margin - (bottom - top)
        draw.multiline_text((x - left, y - top), lines, fill=grey, font=font, spacing=1)
    array = np.asarray(canvas)
    array.flags.writeable = False
    return array


def _paint(canvas: np.ndarray, layers: list[tuple[np.ndarray, float]], a: StudyAnatomy, t: float) -> np.ndarray:
    """Add each layer's value inside its polygon (canonical, posed at phase ``t``) to ``canvas`` [S, S] float32,
    in place and in list order; returns ``canvas``."""
    size = canvas.shape[0]
    for poly, value in layers:
        r0, band = rasterise(to_pixels(poly, a, t, size), size)
        canvas[r0 : r0 + band.shape[0]] += value * band
    return canvas


def _noise_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth random field [size, size] with unit-ish standard deviation and about ``cells`` blobs per side."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    return ndimage.zoom(coarse, size / cells, order=3, grid_mode=True, mode="mirror")[:size, :size]


@functools.lru_cache(maxsize=4)
def _textures(seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A study's fixed soft-tissue and trabecular-bone textures, each [size, size] (cached across its frames)."""
    rng = np.random.default_rng(seed)
    soft, bone = _noise_field(rng, size, 10), _noise_field(rng, size, max(size // 6, 8))
    soft.flags.writeable = bone.flags.writeable = False
    return soft, bone


def render_frame(
    anatomy: StudyAnatomy,
    t: float,
    rng: np.random.Generator,
    cfg: PhantomConfig = DEFAULT_CONFIG,
    tasks: Sequence[str] = DEFAULT_TASKS,
) -> tuple[np.ndarray, np.ndarray]:
    """Render the frame at swallow phase ``t`` in [0, 1].

    Returns the image, uint8 [S, S] (dense is dark, black outside the exposed field but for burned-in text), and
    the labels, uint8 {0, 1} [T, S, S] in ``tasks`` order. ``rng`` draws the quantum noise only.
    """
    tasks = phantom_tasks(tasks)
    size = cfg.image_size
    px = size / 256.0
    scene = build_scene(anatomy, t)

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    in_field, radius = field_mask(anatomy, xx, yy, size)

    labels = np.zeros((len(tasks), size, size), dtype=np.uint8)
    for k, name in enumerate(tasks):
        for poly in scene.labels[name]:
            r0, band = rasterise(to_pixels(poly, anatomy, t, size), size)
            labels[k, r0 : r0 + band.shape[0]] |= band
    labels &= in_field

    low_texture, bone_texture = _textures(anatomy.texture_seed, size)

    low = max(size // 4, 16)
    tissue = _paint(np.zeros((low, low), np.float32), scene.tissue, anatomy, t)
    tissue = ndimage.gaussian_filter(tissue, 0.02 * low)
    tissue = ndimage.zoom(tissue, size / low, order=1, grid_mode=True, mode="nearest")[:size, :size]
    bone = _paint(np.zeros((size, size), np.float32), scene.bone, anatomy, t)
    bone += 1.2 * np.clip(bone - ndimage.gaussian_filter(bone, 1.5 * px), 0, None)  # cortical rim
    air = ndimage.gaussian_filter(_paint(np.zeros((size, size), np.float32), scene.air, anatomy, t), 0.8 * px)
    barium = ndimage.gaussian_filter(_paint(np.zeros((size, size), np.float32), scene.barium, anatomy, t), 1.2 * px)
    metal = _paint(np.zeros((size, size), np.float32), scene.metal, anatomy, t)
    mu = 0.55 * tissue * (1 + 0.12 * low_texture) + bone * (1 + 0.15 * bone_texture) - air + barium + metal
    transmitted = np.exp(-anatomy.contrast * np.clip(mu, 0, None))

    photons = anatomy.photons / px**2  # same dose per area at any image size
    counts = rng.poisson(transmitted * photons).astype(np.float32) / photons
    lift_speed = abs(swallow_state(anatomy, t + 0.02)[0] - swallow_state(anatomy, t - 0.02)[0]) / 0.5
    sigma = anatomy.blur_px * px
    image = ndimage.gaussian_filter(counts, (sigma + cfg.motion_blur_px * px * min(lift_speed, 1.0), sigma))
    image = np.clip(anatomy.gain * image * (1 - anatomy.vignette * np.minimum(radius, 1.0) ** 2), 0, 1)
    image = image**anatomy.gamma * in_field
    image = np.round(255 * image).astype(np.uint8)
    text = _burned_in_text(anatomy.text, size, anatomy.letterbox)
    if text is not None:
        image = np.maximum(image, text)
    return image, labels


def simulate_study(
    seed: int, cfg: PhantomConfig = DEFAULT_CONFIG, tasks: Sequence[str] = DEFAULT_TASKS
) -> list[tuple[np.ndarray, np.ndarray]]:
    """One swallow: ``cfg.num_frames`` pairs (image uint8 [S, S], labels uint8 [T, S, S]), same seed -> same bytes."""
    tasks = phantom_tasks(tasks)
    rng = np.random.default_rng(seed)
    anatomy = sample_anatomy(rng, cfg)
    phases = np.linspace(0.0, 1.0, cfg.num_frames)
    return [render_frame(anatomy, float(t), rng, cfg, tasks) for t in phases]
