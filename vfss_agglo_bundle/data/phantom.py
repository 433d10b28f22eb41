"""Synthetic VFSS studies: lateral head-and-neck fluoroscopy of one swallow, with annotator-style masks.

Geometry lives in normalised image coordinates ``(u, v)`` in ``[0, 1]`` (``u`` to the right, ``v`` down), so any
image size renders the same scene. A study is a canonical neck (face on the left, cervical spine on the right)
posed by a per-study similarity transform, with per-study anatomy, exposure and swallow timing. Each frame is
rendered as an X-ray: attenuation layers (soft tissue, bone, air, barium, metal) -> transmitted intensity ->
quantum (Poisson) noise -> blur -> display gain (air saturates) and gamma -> vignetting -> the exposed field (an
image intensifier's circle or a flat panel's rectangle, inside the collimator shutters; black outside).
Dense is dark: bone mid-grey to dark, barium near black, air bright.

Domain randomisation (phantom v2, :class:`PhantomConfig`; :meth:`PhantomConfig.plain` turns it off): field of
view and magnification vary several-fold; either facing direction; head flexed, extended or tilted; shoulders as a
dark mass over C5-C7; skull base, teeth with fillings, hard palate, calcified laryngeal and tracheal cartilage;
low-contrast vertebrae with facets, unevenly spaced; burned-in text, a ruler or a calibration coin; 4:3 and 16:9
recordings letterboxed into the square frame.

Labels are what an annotator draws: the outline of each structure, clipped to the exposed field (inside the
shutters), one binary channel per task; channels overlap where anatomy does (the bolus lies inside the pharynx). A
vertebra behind the shoulders is still labelled where it is (annotators draw C5-C7 from the spine's line when the
shoulders darken them); burned-in text, rulers and coins are not labelled.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from vfss_agglo_bundle.data.tasks import DEFAULT_TASKS

__all__ = [
    "KNOWN_STRUCTURES",
    "field_mask",
    "PhantomConfig",
    "StudyAnatomy",
    "phantom_config",
    "phantom_tasks",
    "render_frame",
    "sample_anatomy",
    "simulate_study",
]

VERTEBRAE: tuple[str, ...] = ("c1", "c2", "c3", "c4", "c5", "c6", "c7")
KNOWN_STRUCTURES: tuple[str, ...] = ("bolus", "pharynx", "mandible", "hyoid", "epiglottis", *VERTEBRAE)

_CENTRE = np.array([0.5, 0.5])
# Position of each vertebra's anterior-centre along the spine curve (0 = top of C1, 1 = bottom of C7).
_VERTEBRA_LEVELS = np.array([0.03, 0.165, 0.305, 0.445, 0.585, 0.725, 0.865])
_PHARYNX_ENTRY = 0.36  # spine level where the bolus enters the pharynx from the mouth
_PHARYNX_END = 0.80  # spine level of the upper oesophageal sphincter (bottom of the pharynx label)
_UES_TOP = 0.75  # spine level where the sphincter segment of the pharynx begins
_UES_RAMP = 0.03  # phase the sphincter takes to open or close
MAX_FILLINGS = 6


@dataclass(frozen=True)
class PhantomConfig:
    """Knobs of the simulator. Ranges are ``(low, high)`` for per-study uniform sampling.

    Sizes and distances are normalised to the image side unless named ``_px`` (pixels at 256, scaled with size).
    """

    image_size: int = 256
    num_frames: int = 24
    scale: tuple[float, float] = (0.55, 1.2)  # magnification: 0.55 shows head, neck and shoulders, 1.2 the neck
    rotation_deg: tuple[float, float] = (-20.0, 20.0)
    shift: float = 0.07
    field_radius: tuple[float, float] = (0.47, 0.62)
    motion: float = 0.006  # amplitude of slow patient motion during the swallow
    lordosis: tuple[float, float] = (-0.01, 0.07)
    photons: tuple[float, float] = (120.0, 500.0)  # detected quanta per 256-grid pixel at full transmission
    blur_px: tuple[float, float] = (0.5, 1.1)
    motion_blur_px: float = 1.2  # extra vertical blur at peak hyoid speed
    gain: tuple[float, float] = (0.95, 1.9)  # above ~1.2 the air in front of the neck saturates
    gamma: tuple[float, float] = (0.8, 1.2)
    contrast: tuple[float, float] = (0.85, 1.2)
    residue_probability: float = 0.3  # chance that barium stays in the valleculae after the swallow
    clutter_blobs: int = 14  # unlabelled overlapping structures in head and neck
    duration_s: float = 3.0  # the clip's length: frame i is at phase i / (num_frames - 1), time phase * duration_s
    constriction: tuple[float, float] = (0.55, 0.97)  # fraction of the lumen's width closed at peak constriction
    ues_opening: tuple[float, float] = (0.45, 0.8)  # sphincter half width when open, x the pharynx's half width
    # phantom v2: what real VFSS has (PhantomConfig.plain() turns every one of these off)
    mirror_probability: float = 0.5  # the patient faces right: the scene, its labels and its truth mirrored
    flat_panel_probability: float = 0.35  # a flat panel's rectangular field instead of the intensifier's circle
    shutter_probability: float = 0.3  # per edge: a collimator shutter covering shutter_inset of the field
    shutter_inset: tuple[float, float] = (0.04, 0.25)
    letterbox_probability: float = 0.35  # a 4:3 or 16:9 recording (half each) letterboxed into the square frame
    head_flex_deg: tuple[float, float] = (-15.0, 15.0)  # skull and face about C1: + flexion (chin down), - extension
    shoulder_top: tuple[float, float] = (0.52, 1.05)  # canonical v of the shoulders' top: 0.52 hides C5-C7
    shoulder_density: tuple[float, float] = (0.8, 2.6)
    cartilage: tuple[float, float] = (0.0, 0.35)  # calcification of the thyroid, cricoid and tracheal cartilage
    skull_base: tuple[float, float] = (0.15, 0.6)  # density of the petrous ridge and mastoid above C1
    vertebra_contrast: tuple[float, float] = (0.45, 1.1)  # x the vertebrae's bone density (1: phantom v1)
    vertebra_spacing: float = 0.012  # jitter of each vertebra's level along the spine (v1: 0, even tiles)
    facets: bool = True  # the articular pillars behind the vertebral bodies
    fillings: tuple[int, int] = (0, 6)  # dental fillings (metal) on the teeth, at most MAX_FILLINGS
    text_probability: float = 0.8  # burned-in text (study, date, kV / mA, frame rate) in the frame's corners
    ruler_probability: float = 0.2  # a radio-opaque ruler in front of the neck
    coin_probability: float = 0.2  # a calibration coin in front of the neck

    @classmethod
    def plain(cls, **overrides: object) -> PhantomConfig:
        """Phantom v1's look: the anatomy centred at about one magnification, facing left, in a circular field,
        none of the v2 randomisation (``overrides`` as in the constructor)."""
        v1 = dict(scale=(0.95, 1.15), rotation_deg=(-12.0, 12.0), shift=0.035, gain=(0.95, 1.45),
                  mirror_probability=0.0, flat_panel_probability=0.0, shutter_probability=0.0,
                  letterbox_probability=0.0, head_flex_deg=(0.0, 0.0), shoulder_top=(1.6, 1.6),
                  shoulder_density=(0.0, 0.0), cartilage=(0.0, 0.0), skull_base=(0.0, 0.0),
                  vertebra_contrast=(1.0, 1.0), vertebra_spacing=0.0, facets=False, fillings=(0, 0),
                  text_probability=0.0, ruler_probability=0.0, coin_probability=0.0)  # fmt: skip
        return cls(**{**v1, **overrides})

    def __post_init__(self) -> None:
        if self.image_size < 32:
            raise ValueError(f"PhantomConfig.image_size must be >= 32, got {self.image_size}")
        if self.num_frames < 1:
            raise ValueError(f"PhantomConfig.num_frames must be >= 1, got {self.num_frames}")
        if self.duration_s <= 0:
            raise ValueError(f"PhantomConfig.duration_s must be > 0, got {self.duration_s}")
        for name in ("mirror_probability", "flat_panel_probability", "shutter_probability", "letterbox_probability",
                     "text_probability", "ruler_probability", "coin_probability"):  # fmt: skip
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"PhantomConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 <= self.fillings[0] <= self.fillings[1] <= MAX_FILLINGS:
            raise ValueError(
                f"PhantomConfig.fillings must be (low, high) with 0 <= low <= high <= {MAX_FILLINGS}, "
                f"got {self.fillings}"
            )

    @property
    def fps(self) -> float:
        """Frames per second of a simulated clip (its frames span ``duration_s``)."""
        return (self.num_frames - 1) / self.duration_s if self.num_frames > 1 else 1.0 / self.duration_s


DEFAULT_CONFIG = PhantomConfig()
PHANTOM_VERSIONS = ("v1", "v2")


def phantom_config(version: str = "v2", **settings: object) -> PhantomConfig:
    """The simulator's settings for phantom ``v2`` (domain-randomised, the default) or ``v1`` (its plain look:
    :meth:`PhantomConfig.plain`); ``settings`` as in :class:`PhantomConfig`."""
    if version not in PHANTOM_VERSIONS:
        raise ValueError(f"unknown phantom version {version!r}; choose one of {list(PHANTOM_VERSIONS)}.")
    return PhantomConfig.plain(**settings) if version == "v1" else PhantomConfig(**settings)


@dataclass
class StudyAnatomy:
    """Per-study anatomy, pose, exposure and swallow timing, in normalised coordinates of the canonical neck."""

    # pose: canonical neck -> image (similarity about the image centre), field of view, patient motion
    scale: float
    rotation: float  # radians
    shift: np.ndarray  # [2]
    field_centre: np.ndarray  # [2]
    field_radius: float
    motion: np.ndarray  # [2, 3] per axis: amplitude, cycles per swallow, phase
    # spine: quadratic curve along the front of the vertebral bodies
    spine_top: np.ndarray  # [2]
    spine_bottom: np.ndarray  # [2]
    lordosis: float
    vertebra_size: np.ndarray  # [2] body width (front-back), body height
    vertebra_jitter: np.ndarray  # [7, 3] width scale, height scale, tilt (radians)
    # soft tissue and airway
    skin_jitter: np.ndarray  # [16, 2] per point of the body outline
    prevertebral: float  # soft tissue between spine and pharynx
    pharynx_width: float  # lumen half width
    # face, jaw and larynx
    face_offset: np.ndarray  # [2] mandible, teeth, palate, tongue together
    mandible_scale: float
    jaw_opening: float  # radians the jaw opens while the bolus is taken in
    hyoid_offset: np.ndarray  # [2]
    hyoid_size: float
    hyoid_lift: float  # peak hyoid displacement, up and forward
    epiglottis_length: float
    epiglottis_width: float
    epiglottis_tilt: tuple[float, float]  # rest and fully tipped angle from "up" towards the back (radians)
    # bolus and timing (swallow phase t in [0, 1])
    bolus_volume: float
    bolus_start: float  # bolus appears in the mouth
    swallow_onset: float  # bolus head leaves the mouth
    transit_time: float  # mouth -> below the field
    residue: bool
    constriction: float  # fraction of the pharynx's width closed at peak constriction (behind the bolus)
    ues_opening: float  # half width of the open upper oesophageal sphincter, x pharynx_width
    hyoid_delay: float  # phase from the bolus leaving the mouth to the hyoid starting to rise (< 0: before)
    # imaging
    contrast: float
    gain: float
    gamma: float
    photons: float
    blur_px: float
    vignette: float
    clutter: np.ndarray  # [K, 6] u, v, radius u, radius v, angle, density (bone-like > 0, air < 0)
    dense_dots: np.ndarray  # [D, 3] u, v, radius: earrings, skin markers (in the head: they turn with it)
    lines: np.ndarray  # [L, 4] u0, v0, u1, v1: glasses frames, head holder
    texture_seed: int
    # phantom v2 (defaults: phantom v1)
    mirror: bool = False
    flat_panel: bool = False
    # collimator insets: left, top, right, bottom of the field before mirroring (left is on the right when mirrored)
    shutters: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(4))
    letterbox: float = 1.0  # height / width of the recording (1, 0.75 or 0.5625): its scale in the square frame
    head_flex: float = 0.0  # radians of the image-space turn about C1 (< 0: flexion, the chin down)
    shoulder_top: float = 1.6
    shoulder_density: float = 0.0
    cartilage: float = 0.0
    skull_base: float = 0.0
    vertebra_contrast: float = 1.0
    facets: bool = False
    vertebra_levels: np.ndarray = dataclasses.field(default_factory=lambda: _VERTEBRA_LEVELS.copy())
    fillings: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 3)))  # along teeth, lower?, radius
    ruler: np.ndarray | None = None  # [4] u, v, angle, length
    coin: np.ndarray | None = None  # [3] u, v, radius
    text: tuple[tuple[int, int, str], ...] = ()  # corner (0-3), grey level, line(s) burned into the frame


def phantom_tasks(tasks: Sequence[str]) -> tuple[str, ...]:
    """Validate task names against the structures the phantom draws (:data:`KNOWN_STRUCTURES`); return a tuple."""
    tasks = tuple(tasks)
    if not tasks:
        raise ValueError(f"tasks is empty; pick names from the known structures {list(KNOWN_STRUCTURES)}")
    unknown = [name for name in tasks if name not in KNOWN_STRUCTURES]
    if unknown:
        raise ValueError(f"unknown structure name(s) {unknown}; the phantom knows {list(KNOWN_STRUCTURES)}")
    return tasks


def sample_anatomy(rng: np.random.Generator, cfg: PhantomConfig = DEFAULT_CONFIG) -> StudyAnatomy:
    """Draw one study's anatomy, pose, exposure and swallow timing."""
    u = rng.uniform
    bolus_start = u(0.06, 0.22)
    swallow_onset = bolus_start + u(0.12, 0.28)
    k = cfg.clutter_blobs
    clutter = np.stack(
        [
            u(-0.05, 0.62, k),
            u(-0.1, 0.5, k),
            u(0.015, 0.08, k),
            u(0.01, 0.05, k),
            u(0, np.pi, k),
            rng.choice([-1.0, 1.0], k, p=[0.35, 0.65]) * u(0.08, 0.35, k),
        ],
        axis=1,
    )
    num_dots = int(rng.integers(0, 4))
    dense_dots = np.stack([u(0.0, 0.6, num_dots), u(0.05, 0.45, num_dots), u(0.006, 0.012, num_dots)], axis=1)
    num_lines = int(rng.integers(0, 3))
    lines = np.stack(
        [u(-0.1, 0.3, num_lines), u(-0.1, 0.3, num_lines), u(0.5, 1.1, num_lines), u(-0.1, 0.4, num_lines)], axis=1
    )
    return StudyAnatomy(
        scale=u(*cfg.scale),
        rotation=np.deg2rad(u(*cfg.rotation_deg)),
        shift=u(-cfg.shift, cfg.shift, 2),
        field_centre=_CENTRE + u(-0.03, 0.03, 2),
        field_radius=u(*cfg.field_radius),
        motion=np.stack([cfg.motion * u(0.3, 1.0, 2), u(0.5, 2.0, 2), u(0, 2 * np.pi, 2)], axis=1),
        spine_top=np.array([0.50, 0.18]) + u(-0.02, 0.02, 2),
        spine_bottom=np.array([0.65, 0.87]) + u(-0.025, 0.02, 2),
        lordosis=u(*cfg.lordosis),
        vertebra_size=np.array([0.088, 0.074]) * u(0.92, 1.08),
        vertebra_jitter=np.stack([u(0.94, 1.06, 7), u(0.93, 1.07, 7), np.deg2rad(u(-5, 5, 7))], axis=1),
        skin_jitter=u(-0.02, 0.02, (len(_SKIN), 2)),
        prevertebral=u(0.018, 0.035),
        pharynx_width=u(0.020, 0.030),
        face_offset=u(-0.03, 0.03, 2),
        mandible_scale=u(0.92, 1.08),
        jaw_opening=np.deg2rad(u(2, 8)),
        hyoid_offset=u(-0.015, 0.015, 2),
        hyoid_size=u(0.85, 1.15),
        hyoid_lift=u(0.045, 0.07),
        epiglottis_length=u(0.085, 0.11),
        epiglottis_width=u(0.009, 0.013),
        epiglottis_tilt=(np.deg2rad(u(5, 25)), np.deg2rad(u(115, 150))),
        bolus_volume=u(0.8, 1.25),
        bolus_start=bolus_start,
        swallow_onset=swallow_onset,
        transit_time=u(0.22, 0.34),
        residue=bool(rng.random() < cfg.residue_probability),
        contrast=u(*cfg.contrast),
        gain=u(*cfg.gain),
        gamma=u(*cfg.gamma),
        photons=u(*cfg.photons),
        blur_px=u(*cfg.blur_px),
        vignette=u(0.1, 0.3),
        clutter=clutter,
        dense_dots=dense_dots,
        lines=lines,
        texture_seed=int(rng.integers(0, 2**31 - 1)),
        constriction=u(*cfg.constriction),  # drawn last: the draws above are those of earlier versions
        ues_opening=u(*cfg.ues_opening),
        hyoid_delay=u(-0.08, 0.04),
        **_sample_v2(rng, cfg),  # drawn last, always the same number of draws: a knob set to off changes nothing else
    )


_TEXT_LINES = ("VFSS {d:02d}/{m:02d}/2026", "kV {kv}  mA {ma:.1f}", "{fps} fps  #{n:04d}", "LAT  ID {pid:06d}")


def _sample_v2(rng: np.random.Generator, cfg: PhantomConfig) -> dict[str, object]:
    """The phantom v2 part of a study (:class:`PhantomConfig`'s v2 knobs)."""
    u = rng.uniform
    draws = rng.random(7)  # mirror, flat panel, letterbox, letterbox kind, text, ruler, coin
    shutters = np.where(rng.random(4) < cfg.shutter_probability, u(*cfg.shutter_inset, 4), 0.0)
    low, high = cfg.fillings  # one draw whatever the range (rng.integers takes none for an empty range)
    num_fillings = low + min(int(rng.random() * (high - low + 1)), high - low)
    fillings = np.stack([u(0, 1, MAX_FILLINGS), u(0, 1, MAX_FILLINGS) < 0.5, u(0.006, 0.012, MAX_FILLINGS)], axis=1)
    fillings = fillings[:num_fillings]
    ruler = np.array([u(0.15, 0.35), u(0.55, 0.8), u(-0.3, 0.3), u(0.25, 0.4)])  # on the chin or in front of the neck
    coin = np.array([u(0.2, 0.35), u(0.7, 0.85), u(0.025, 0.045)])  # taped to the neck or chin
    corners = rng.permutation(4)[:2]
    values = dict(d=int(rng.integers(1, 29)), m=int(rng.integers(1, 13)), kv=int(rng.integers(60, 90)),
                  ma=float(u(0.5, 3.0)), fps=int(rng.choice([15, 25, 30])), n=int(rng.integers(1, 9999)),
                  pid=int(rng.integers(0, 999999)))  # fmt: skip
    lines = [line.format(**values) for line in _TEXT_LINES]
    text = tuple(
        (int(c), int(rng.integers(200, 256)), "\n".join(lines[2 * k : 2 * k + 2])) for k, c in enumerate(corners)
    )
    return dict(
        mirror=bool(draws[0] < cfg.mirror_probability),
        flat_panel=bool(draws[1] < cfg.flat_panel_probability),
        shutters=shutters,
        letterbox=(0.75, 0.5625)[int(draws[3] < 0.5)] if draws[2] < cfg.letterbox_probability else 1.0,
        head_flex=float(-np.deg2rad(u(*cfg.head_flex_deg))),  # image v points down: a negative turn drops the chin
        shoulder_top=float(u(*cfg.shoulder_top)),
        shoulder_density=float(u(*cfg.shoulder_density)),
        cartilage=float(u(*cfg.cartilage)),
        skull_base=float(u(*cfg.skull_base)),
        vertebra_contrast=float(u(*cfg.vertebra_contrast)),
        facets=cfg.facets,
        vertebra_levels=_VERTEBRA_LEVELS + cfg.vertebra_spacing * u(-1, 1, 7),
        fillings=fillings,
        ruler=ruler if draws[5] < cfg.ruler_probability else None,
        coin=coin if draws[6] < cfg.coin_probability else None,
        text=text if draws[4] < cfg.text_probability else (),
    )


# ----------------------------------------------------------------------------------------------- geometry


def _rotation(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def _ellipse(centre: np.ndarray, radii: tuple[float, float], angle: float = 0.0, n: int = 24) -> np.ndarray:
    """Polygon [n, 2] approximating an ellipse."""
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    pts = np.stack([radii[0] * np.cos(a), radii[1] * np.sin(a)], axis=1)
    return pts @ _rotation(angle).T + centre


def _smooth(poly: np.ndarray, iterations: int = 2) -> np.ndarray:
    """Chaikin corner cutting of a closed polygon [N, 2] -> [N * 2**iterations, 2]."""
    for _ in range(iterations):
        nxt = np.roll(poly, -1, axis=0)
        poly = np.stack([0.75 * poly + 0.25 * nxt, 0.25 * poly + 0.75 * nxt], axis=1).reshape(-1, 2)
    return poly


def _tube(centreline: np.ndarray, half_width: np.ndarray) -> np.ndarray:
    """Closed outline [2N, 2] of a band of varying half width [N] around a polyline [N, 2]."""
    tangent = np.gradient(centreline, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True) + 1e-12
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1) * half_width[:, None]
    return np.concatenate([centreline + normal, (centreline - normal)[::-1]])


def _resample(polyline: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resample a polyline at even arc length. Returns points [M, 2], their arc length [M], raw arc length [N]."""
    raw = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(polyline, axis=0), axis=1))])
    s = np.linspace(0.0, raw[-1], max(int(raw[-1] / step), 2) + 1)
    pts = np.stack([np.interp(s, raw, polyline[:, 0]), np.interp(s, raw, polyline[:, 1])], axis=1)
    return pts, s, raw


def _bezier(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quadratic Bezier points and unit tangents at parameters f [N] (f outside [0, 1] extrapolates)."""
    f = np.asarray(f, dtype=np.float64)[:, None]
    pts = (1 - f) ** 2 * p0 + 2 * f * (1 - f) * p1 + f**2 * p2
    der = 2 * (1 - f) * (p1 - p0) + 2 * f * (p2 - p1)
    return pts, der / np.linalg.norm(der, axis=1, keepdims=True)


def _smoothstep(x: np.ndarray | float) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _plateau(t: float, start: float, stop: float, ramp: float) -> float:
    """0 before ``start``, rises over ``ramp`` to 1, falls back to 0 over ``ramp`` from ``stop``."""
    return float(_smoothstep((t - start) / ramp) * (1 - _smoothstep((t - stop) / ramp)))


def _inverse_smoothstep(y: float) -> float:
    """The ``x`` in [0, 1] with ``_smoothstep(x) == y`` (``y`` clipped to [0, 1])."""
    return float(0.5 - np.sin(np.arcsin(1 - 2 * np.clip(y, 0.0, 1.0)) / 3))


# ------------------------------------------------------------------------------------------------- scene

# Vertebra outlines in vertebra units: x from the front of the body backwards (body width 1), y down (body height 1).
_VERTEBRA = np.array(
    [
        [0.00, -0.50],
        [0.95, -0.52],
        [1.05, -0.45],
        [1.15, -0.56],
        [1.45, -0.64],
        [1.65, -0.45],
        [1.85, -0.20],
        [2.40, -0.02],
        [2.60, 0.15],
        [2.45, 0.32],
        [1.90, 0.25],
        [1.70, 0.55],
        [1.40, 0.60],
        [1.15, 0.48],
        [1.00, 0.50],
        [0.00, 0.50],
        [-0.04, 0.00],
    ]
)
_AXIS = np.array(  # C2: taller body with the dens pointing up, large spinous process
    [
        [0.00, -0.45],
        [0.18, -0.50],
        [0.28, -1.05],
        [0.55, -1.10],
        [0.72, -0.55],
        [1.00, -0.55],
        [1.15, -0.40],
        [1.35, -0.62],
        [1.65, -0.55],
        [1.80, -0.25],
        [2.45, -0.12],
        [2.70, 0.12],
        [2.45, 0.38],
        [1.85, 0.30],
        [1.60, 0.62],
        [1.25, 0.55],
        [1.05, 0.32],
        [1.00, 0.55],
        [0.00, 0.55],
        [-0.06, 0.05],
    ]
)
_ATLAS = np.array(  # C1: small anterior arch, lateral mass, thin posterior arch with a tubercle
    [
        [-0.05, 0.00],
        [0.05, -0.32],
        [0.35, -0.42],
        [0.60, -0.55],
        [1.20, -0.50],
        [1.50, -0.28],
        [2.10, -0.25],
        [2.35, -0.45],
        [2.62, -0.32],
        [2.66, 0.10],
        [2.40, 0.35],
        [2.10, 0.20],
        [1.50, 0.25],
        [1.20, 0.48],
        [0.60, 0.48],
        [0.35, 0.38],
        [0.05, 0.32],
    ]
)
_BODY = np.array([[0.05, -0.42], [0.95, -0.45], [0.95, 0.42], [0.05, 0.42]])  # vertebral body of C2..C7
_ATLAS_ARCH = np.array([[0.05, -0.3], [0.35, -0.35], [0.35, 0.3], [0.05, 0.3]])  # anterior arch of C1
_MANDIBLE = np.array(
    [
        [0.03, 0.575],
        [0.10, 0.555],
        [0.20, 0.545],
        [0.28, 0.525],
        [0.305, 0.44],
        [0.32, 0.31],
        [0.365, 0.36],
        [0.405, 0.255],
        [0.445, 0.285],
        [0.435, 0.40],
        [0.415, 0.50],
        [0.375, 0.56],
        [0.30, 0.605],
        [0.18, 0.665],
        [0.08, 0.71],
        [0.02, 0.70],
        [-0.015, 0.645],
    ]
)
_SKIN = np.array(  # body outline, face to the left, back of the neck to the right (per-study jitter per point)
    [
        [0.82, -0.35],
        [0.81, 0.05],
        [0.85, 0.30],
        [0.93, 0.58],
        [1.00, 0.82],
        [1.05, 1.05],
        [1.09, 1.35],
        [0.44, 1.35],
        [0.38, 1.00],
        [0.33, 0.92],
        [0.25, 0.86],
        [0.11, 0.83],
        [0.03, 0.78],
        [-0.02, 0.66],
        [-0.40, 0.60],
        [-0.40, -0.35],
    ]
)


@dataclass
class _Scene:
    """Canonical-space polygons of one frame: labelled outlines and attenuation layers ``(polygon, value)``."""

    labels: dict[str, list[np.ndarray]]
    tissue: list[tuple[np.ndarray, float]]  # smooth thickness, rendered at low resolution and blurred
    bone: list[tuple[np.ndarray, float]]  # cortical rim and trabecular texture added
    air: list[tuple[np.ndarray, float]]
    barium: list[tuple[np.ndarray, float]]
    metal: list[tuple[np.ndarray, float]]
    # what the kinematics ground truth needs beyond the labels (canonical coordinates): "hyoid_body" polygon,
    # "epiglottis_axis" [2, 2] base and tip, "ues_half" (half width at the sphincter), states "lift", "tip",
    # "constriction", "ues_opening" in [0, 1] and "ues_phases" (opening, closing)
    landmarks: dict[str, object]


def _swallow_state(a: StudyAnatomy, t: float) -> tuple[float, float]:
    """Hyoid elevation and epiglottis inversion in [0, 1] at phase ``t``."""
    end = a.swallow_onset + 0.85 * a.transit_time
    lift = _plateau(t, a.swallow_onset + a.hyoid_delay, end, 0.08)
    tip = _plateau(t, a.swallow_onset + 0.02, end - 0.02, 0.06)
    return lift, tip


def _constriction_state(a: StudyAnatomy, t: float) -> float:
    """How far the pharynx has contracted behind the bolus, in [0, 1] at phase ``t``: a smooth pulse that peaks as
    the tail clears the hypopharynx (0.9 of the transit), so the maximum constriction has one frame."""
    peak = a.swallow_onset + 0.9 * a.transit_time
    return _plateau(t, peak - 0.1, peak, 0.1)


def _ues_phases(a: StudyAnatomy, oral: float, ues: float, total: float) -> tuple[float, float]:
    """Phases at which the bolus head reaches the sphincter (fully open) and its tail has passed it (closing).

    Inverts :func:`_bolus_extent` at arc length ``ues``: the sphincter opens over ``_UES_RAMP`` before the first
    and closes over ``_UES_RAMP`` after the second.
    """
    tail0, head0 = 0.25 * oral, 0.92 * oral
    opening = _inverse_smoothstep((ues - head0) / (total - head0)) / 1.5
    closing = _inverse_smoothstep(((ues - tail0) / (total - tail0)) ** (1 / 1.3))
    return a.swallow_onset + opening * a.transit_time, a.swallow_onset + closing * a.transit_time


def _bolus_extent(a: StudyAnatomy, t: float, oral: float, total: float) -> tuple[float, float] | None:
    """Arc-length interval (tail, head) of the bolus along its path, or None when no bolus is in view."""
    if t < a.bolus_start:
        return None
    tail0, head0 = 0.25 * oral, 0.92 * oral
    p = (t - a.swallow_onset) / a.transit_time
    if p <= 0:
        return tail0, head0
    head = head0 + (total - head0) * _smoothstep(1.5 * p)
    tail = tail0 + (total - tail0) * _smoothstep(p) ** 1.3
    if total - tail < 1e-3:
        return None
    return tail, head


def _build_scene(a: StudyAnatomy, t: float) -> _Scene:
    """All polygons of the frame at swallow phase ``t``, in canonical normalised coordinates."""
    labels: dict[str, list[np.ndarray]] = {name: [] for name in KNOWN_STRUCTURES}
    tissue: list[tuple[np.ndarray, float]] = []
    bone: list[tuple[np.ndarray, float]] = []
    air: list[tuple[np.ndarray, float]] = []
    barium: list[tuple[np.ndarray, float]] = []
    metal: list[tuple[np.ndarray, float]] = []
    lift, tip = _swallow_state(a, t)
    pivot = a.spine_top + np.array([-0.02, 0.0])  # the head flexes and extends about the atlas
    head_turn = _rotation(a.head_flex)

    def flex(poly: np.ndarray) -> np.ndarray:
        return (poly - pivot) @ head_turn.T + pivot

    # soft tissue: body outline, thicker head, shoulder, overlapping soft structures
    tissue.append((_smooth(_SKIN + a.skin_jitter, 2), 1.0))
    tissue.append((flex(_ellipse(np.array([0.25, 0.05]), (0.55, 0.42), 0.15)), 0.7))
    tissue.append((flex(_ellipse(np.array([0.05, 0.50]) + a.face_offset, (0.35, 0.22), -0.1)), 0.5))
    tissue.append((_ellipse(np.array([1.05, 1.12]) + a.skin_jitter[5], (0.32, 0.22), -0.5), 1.6))
    if a.shoulder_density > 0:  # both shoulders as one dark mass; its top edge over C5-C7 or below
        shoulders = _ellipse(np.array([0.95, a.shoulder_top + 0.36]), (0.85, 0.36), -0.12, 32)
        tissue.append((shoulders, a.shoulder_density))
    for cu, cv, ru, rv, ang, dens in a.clutter[: len(a.clutter) // 2]:  # first half: soft overlaps in the neck
        tissue.append((_ellipse(np.array([cu + 0.25, cv + 0.45]), (2 * ru, 2 * rv), ang), 0.25 * abs(dens)))

    # skull: occipital and parietal bone as a band, skull base above the atlas
    skull_centre = np.array([0.28, -0.02]) + a.skin_jitter[0] * 0.5
    bone.append((flex(_ellipse(skull_centre, (0.47, 0.27), 0.12, 48)), 0.35))
    bone.append((flex(_ellipse(skull_centre + [0.0, -0.008], (0.445, 0.245), 0.12, 48)), -0.35))
    skull_floor = np.array([[0.40, 0.12], [0.58, 0.10], [0.66, 0.16], [0.55, 0.20], [0.42, 0.19]])
    bone.append((flex(_smooth(skull_floor, 2)), 0.45))
    if a.skull_base > 0:  # petrous ridge and mastoid: dense bone above the atlas
        bone.append(
            (flex(_tube(np.array([[0.28, 0.02], [0.45, 0.07], [0.62, 0.11]]), np.full(3, 0.013))), a.skull_base)
        )
        bone.append((flex(_ellipse(np.array([0.60, 0.13]), (0.06, 0.04), 0.5)), a.skull_base))
    for cu, cv, ru, rv, ang, dens in a.clutter[len(a.clutter) // 2 :]:  # second half: bone and sinuses in the head
        (bone if dens > 0 else air).append((flex(_ellipse(np.array([cu, cv]), (ru, rv), ang)), abs(dens)))

    # spine: seven vertebrae along a lordotic curve, each tilted with the local tangent
    top, bottom = a.spine_top, a.spine_bottom
    tangent_mid = (bottom - top) / np.linalg.norm(bottom - top)
    back_mid = np.array([tangent_mid[1], -tangent_mid[0]])
    control = 0.5 * (top + bottom) - a.lordosis * back_mid
    origins, tangents = _bezier(top, control, bottom, a.vertebra_levels)
    for i, name in enumerate(VERTEBRAE):
        template = (_ATLAS, _AXIS, *[_VERTEBRA] * 5)[i]
        height_scale = (0.75, 1.15, 1, 1, 1, 1, 1)[i]
        down = _rotation(a.vertebra_jitter[i, 2]) @ tangents[i]
        back = np.array([down[1], -down[0]])
        width = a.vertebra_size[0] * a.vertebra_jitter[i, 0]
        height = a.vertebra_size[1] * a.vertebra_jitter[i, 1] * height_scale
        local = _smooth(template, 2)
        outline = origins[i] + local[:, :1] * width * back + local[:, 1:] * height * down
        labels[name].append(outline)
        density = a.vertebra_contrast
        bone.append((outline, 0.25 * density))
        body = _smooth(_ATLAS_ARCH if i == 0 else _BODY, 2)  # denser than the posterior elements
        bone.append((origins[i] + body[:, :1] * width * back + body[:, 1:] * height * down, 0.2 * density))
        if i >= 2 and a.facets:  # the articular pillar (facets) behind the body
            facet = _ellipse(np.array([1.45, 0.0]), (0.22, 0.42), 0.3, 12)
            bone.append((origins[i] + facet[:, :1] * width * back + facet[:, 1:] * height * down, 0.12 * density))

    # pharynx: lumen in front of the spine from the nasopharynx to the upper oesophageal sphincter
    levels = np.linspace(0.0, _PHARYNX_END, 42)
    spine_front, spine_down = _bezier(top, control, bottom, levels)
    front = -np.stack([spine_down[:, 1], -spine_down[:, 0]], axis=1)
    pharynx_line = spine_front + front * (a.prevertebral + a.pharynx_width)
    profile = np.interp(levels, [0.0, 0.2, 0.62, 0.74, _PHARYNX_END], [0.7, 1.0, 1.0, 0.55, 0.3])
    constriction = _constriction_state(a, t)
    pharynx_half = a.pharynx_width * profile * (1 - a.constriction * constriction)

    # the bolus path: mouth -> over the tongue base -> down the pharynx -> oesophagus below the field
    face = a.face_offset
    oral_path = flex(np.array([[0.10, 0.49], [0.20, 0.48], [0.29, 0.47], [0.36, 0.455]]) + face)
    entry = np.searchsorted(levels, _PHARYNX_ENTRY)
    oes_levels = np.linspace(_PHARYNX_END, 1.35, 12)[1:]
    oes_pts, oes_down = _bezier(top, control, bottom, oes_levels)
    oes_front = -np.stack([oes_down[:, 1], -oes_down[:, 0]], axis=1)
    oes_line = oes_pts + oes_front * (a.prevertebral + 0.6 * a.pharynx_width)
    raw_path = np.concatenate([oral_path, pharynx_line[entry:], oes_line])
    path, arc, raw_arc = _resample(raw_path, 0.006)
    oral_len = raw_arc[len(oral_path)]
    ues_len = raw_arc[len(oral_path) + len(levels) - entry - 1]
    oral_half, pw = 0.045 * a.bolus_volume, a.pharynx_width  # a ball in the mouth; the lumen shapes it after
    ues_half = a.ues_opening * pw
    path_half = np.interp(
        arc,
        [0.0, 0.6 * oral_len, oral_len, ues_len - 0.05, ues_len, arc[-1]],
        [oral_half, oral_half, 0.95 * pw, 0.95 * pw, 0.92 * ues_half, 0.85 * ues_half],
    )
    ues_phases = _ues_phases(a, oral_len, ues_len, arc[-1])
    ues_opening = _plateau(t, ues_phases[0] - _UES_RAMP, ues_phases[1], _UES_RAMP)
    extent = _bolus_extent(a, t, oral_len, arc[-1])
    if extent is not None:
        tail, head = extent
        keep = (arc > tail) & (arc < head)
        s = np.concatenate([[tail], arc[keep], [head]])
        pts = np.stack([np.interp(s, arc, path[:, 0]), np.interp(s, arc, path[:, 1])], axis=1)
        x = (s - tail) / max(head - tail, 1e-6)
        ragged = 1 + 0.08 * np.sin(90 * s + 7 * t) + 0.05 * np.sin(230 * s - 11 * t)  # uneven barium edge
        half = np.interp(s, arc, path_half) * ragged * np.sqrt(np.clip(1 - np.abs(2 * x - 1) ** 3, 0, 1))
        outline = _tube(pts, half)
        labels["bolus"].append(outline)
        barium.append((outline, 2.2))
        # the pharynx wall stretches around the bolus; it narrows behind the tail (stripping wave)
        ph_arc = raw_arc[len(oral_path) : len(oral_path) + len(levels) - entry]
        bolus_half = np.interp(ph_arc, s, half, left=0.0, right=0.0)
        behind = (
            np.exp(-(((ph_arc - tail) / 0.06) ** 2))
            * (ph_arc < tail)
            * _plateau(t, a.swallow_onset, a.swallow_onset + a.transit_time, 0.05)
        )
        pharynx_half[entry:] = np.maximum(pharynx_half[entry:] * (1 - 0.55 * behind), 1.08 * bolus_half)
    sphincter = levels >= _UES_TOP
    pharynx_half[sphincter] = np.maximum(pharynx_half[sphincter], ues_half * ues_opening)
    pharynx = _tube(pharynx_line, pharynx_half)
    labels["pharynx"].append(pharynx)
    air.append((pharynx, 0.2))

    # larynx and trachea: air column in front of the oesophagus, rising with the hyoid
    up_fwd = np.array([-0.6, -0.8])  # canonical "up and forward"
    larynx_levels = np.linspace(0.58, 1.35, 14)
    lx_pts, lx_down = _bezier(top, control, bottom, larynx_levels)
    lx_front = -np.stack([lx_down[:, 1], -lx_down[:, 0]], axis=1)
    lx_line = lx_pts + lx_front * (a.prevertebral + 2 * a.pharynx_width + 0.035) + 0.7 * lift * a.hyoid_lift * up_fwd
    lx_half = np.full(len(lx_line), 0.017) * (1 - 0.6 * lift * np.linspace(1, 0, len(lx_line)) ** 4)
    air.append((_tube(lx_line, lx_half), 0.16))
    if a.cartilage > 0:  # calcified thyroid and cricoid cartilage and tracheal rings: rims around the airway
        lx_angle = float(np.arctan2(lx_down[3, 1], lx_down[3, 0]))
        for centre, radii, value in (
            (lx_line[2] - lx_front[2] * 0.012, (0.065, 0.04), 1.0),  # thyroid
            (lx_line[5], (0.022, 0.03), 0.8),  # cricoid
            *[(lx_line[k], (0.008, 0.024), 0.5) for k in range(7, 13)],  # tracheal rings
        ):
            outer, inner = (
                _ellipse(centre, radii, lx_angle, 20),
                _ellipse(centre, (0.7 * radii[0], 0.7 * radii[1]), lx_angle, 20),
            )
            bone += [(outer, value * a.cartilage), (inner, -value * a.cartilage)]

    # epiglottis: thin strip from the front wall of the pharynx, tipping back and down during the swallow
    base_level = 0.50
    b_idx = np.searchsorted(levels, base_level)
    down_here = spine_down[b_idx]
    up_here, back_here = -down_here, np.array([down_here[1], -down_here[0]])
    base = pharynx_line[b_idx] - back_here * 0.6 * a.pharynx_width + lift * a.hyoid_lift * 0.8 * up_fwd
    tilt = a.epiglottis_tilt[0] + (a.epiglottis_tilt[1] - a.epiglottis_tilt[0]) * tip
    frac = np.linspace(0.0, 1.0, 10)
    bend = tilt + 0.35 * frac  # curls towards the back along its length
    direction = np.cos(bend)[:, None] * up_here + np.sin(bend)[:, None] * back_here
    centreline = base + a.epiglottis_length * np.cumsum(direction, axis=0) / len(frac)
    epiglottis = _tube(centreline, a.epiglottis_width * (1.1 - 0.3 * frac) * np.sqrt(1.05 - frac**8))
    labels["epiglottis"].append(epiglottis)
    vallecula = _ellipse(centreline[5] - back_here * 0.02, (0.035, 0.013), np.arctan2(up_here[1], up_here[0]))
    air.append((vallecula, 0.2 * (1 - tip)))  # air pocket between tongue base and epiglottis
    bone.append((epiglottis, 0.15))
    if a.residue and t > a.swallow_onset + 0.6 * a.transit_time:  # barium left in the vallecula and pyriform sinus
        pyriform = pharynx_line[np.searchsorted(levels, 0.74)] + back_here * 0.4 * a.pharynx_width
        for blob in (
            _ellipse(centreline[4] - back_here * 0.012, (0.007, 0.014), np.arctan2(up_here[1], up_here[0])),
            _ellipse(pyriform, (0.008, 0.012), 0.3),
        ):
            labels["bolus"].append(blob)
            labels["pharynx"].append(blob)  # the recesses it fills are pharyngeal lumen
            barium.append((blob, 1.5))

    # hyoid: small dense body with a greater horn reaching back and up; moves up and forward
    hyoid_centre = (
        pharynx_line[b_idx] - back_here * (a.pharynx_width + 0.06) + a.hyoid_offset + lift * a.hyoid_lift * up_fwd
    )
    hs = a.hyoid_size
    hyoid_body = _ellipse(hyoid_centre, (0.02 * hs, 0.012 * hs), 0.4, 16)
    horn = _tube(
        np.stack([hyoid_centre + (0.01 + 0.045 * k) * hs * (0.92 * back_here + 0.4 * up_here) for k in (0, 0.5, 1)]),
        np.array([0.0065, 0.005, 0.0035]) * hs,
    )
    labels["hyoid"] += [hyoid_body, horn]
    bone += [(hyoid_body, 0.38), (horn, 0.25)]

    # face: mandible (opens slightly while the bolus is taken in), teeth, hard palate, tongue and oral air
    jaw = a.jaw_opening * _plateau(t, a.bolus_start - 0.08, a.swallow_onset - 0.05, 0.06)
    condyle = np.array([0.42, 0.27]) + face
    mandible = ((_MANDIBLE + face - condyle) * a.mandible_scale) @ _rotation(-jaw).T + condyle
    mandible = flex(_smooth(mandible, 2))
    labels["mandible"].append(mandible)
    bone.append((mandible, 0.5))
    lower_teeth = (np.array([[0.0, 0.54], [0.1, 0.535], [0.2, 0.515]]) + face - condyle) * a.mandible_scale
    lower_teeth = flex(lower_teeth @ _rotation(-jaw).T + condyle)
    bone.append((_tube(lower_teeth, np.array([0.022, 0.026, 0.024])), 0.3))
    upper_teeth = flex(np.array([[0.0, 0.47], [0.1, 0.465], [0.2, 0.455]]) + face)
    bone.append((_tube(upper_teeth, np.array([0.024, 0.028, 0.025])), 0.3))
    palate = _tube(
        flex(np.array([[-0.05, 0.435], [0.15, 0.425], [0.33, 0.41]]) + face), np.array([0.008, 0.008, 0.005])
    )
    bone.append((palate, 0.5))
    tissue.append((flex(_ellipse(np.array([0.24, 0.50]) + face, (0.16, 0.055), -0.15)), 0.25))
    air.append((flex(_ellipse(np.array([0.22, 0.455]) + face, (0.11, 0.012), -0.08)), 0.1 * (1 - 0.7 * lift)))
    for along, lower, r in a.fillings:  # amalgam fillings on the teeth
        teeth = lower_teeth if lower else upper_teeth
        centre = np.array([np.interp(along, [0, 0.5, 1], teeth[:, k]) for k in (0, 1)])
        metal.append((_ellipse(centre, (1.4 * r, r), 0.0, 10), 3.0))

    # extras that confuse: dense dots (earrings, skin markers), thin lines (glasses, head holder), ruler and coin
    for cu, cv, r in a.dense_dots:
        metal.append((flex(_ellipse(np.array([cu, cv]), (r, r), 0.0, 12)), 3.0))
    for u0, v0, u1, v1 in a.lines:
        metal.append((_tube(np.array([[u0, v0], [u1, v1]]), np.array([0.003, 0.003])), 0.8))
    if a.ruler is not None:  # a radio-opaque ruler: a bar with a tick every 1/12 of its length
        ru, rv, angle, length = a.ruler
        along, across = np.array([np.sin(angle), np.cos(angle)]), np.array([np.cos(angle), -np.sin(angle)])
        start = np.array([ru, rv])
        metal.append((_tube(np.stack([start, start + length * along]), np.array([0.006, 0.006])), 1.2))
        for k in range(13):
            p = start + k * length / 12 * along
            metal.append((_tube(np.stack([p, p + (0.03 if k % 6 == 0 else 0.016) * across]), np.full(2, 0.004)), 1.2))
    if a.coin is not None:
        metal.append((_ellipse(a.coin[:2], (a.coin[2], a.coin[2]), 0.0, 24), 2.0))
    landmarks = {
        "hyoid_body": hyoid_body,
        "epiglottis_axis": np.stack([centreline[0], centreline[-1]]),
        "ues_half": float(pharynx_half[-1]),
        "lift": lift,
        "tip": tip,
        "constriction": constriction,
        "ues_opening": ues_opening,
        "ues_phases": ues_phases,
    }
    return _Scene(labels, tissue, bone, air, barium, metal, landmarks)


# --------------------------------------------------------------------------------------------- rendering


def _rasterise(poly: np.ndarray, size: int) -> tuple[int, np.ndarray]:
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


def _to_pixels(points: np.ndarray, a: StudyAnatomy, t: float, size: int) -> np.ndarray:
    """Canonical normalised points [N, 2] -> pixel (x, y) in the image at phase ``t``: posed (the study's
    similarity and motion) in the recording's square, mirrored when the patient faces right, then scaled by
    ``letterbox`` about the centre (a 4:3 or 16:9 recording letterboxed into the square frame)."""
    amp, freq, phase = a.motion[:, 0], a.motion[:, 1], a.motion[:, 2]
    motion = amp * np.sin(2 * np.pi * freq * t + phase)
    posed = (points - _CENTRE) @ (a.scale * _rotation(a.rotation)).T + _CENTRE + a.shift + motion
    if a.mirror:
        posed = posed * np.array([-1.0, 1.0]) + np.array([1.0, 0.0])
    return (_CENTRE + a.letterbox * (posed - _CENTRE)) * size - 0.5


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
    size = canvas.shape[0]
    for poly, value in layers:
        r0, band = _rasterise(_to_pixels(poly, a, t, size), size)
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
    scene = _build_scene(anatomy, t)

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    in_field, radius = field_mask(anatomy, xx, yy, size)

    labels = np.zeros((len(tasks), size, size), dtype=np.uint8)
    for k, name in enumerate(tasks):
        for poly in scene.labels[name]:
            r0, band = _rasterise(_to_pixels(poly, anatomy, t, size), size)
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
    lift_speed = abs(_swallow_state(anatomy, t + 0.02)[0] - _swallow_state(anatomy, t - 0.02)[0]) / 0.5
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
