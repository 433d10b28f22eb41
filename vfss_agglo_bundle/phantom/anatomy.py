"""What one phantom study is: the simulator's settings (:class:`PhantomConfig`) and the per-study anatomy, pose,
exposure and swallow timing drawn from them (:func:`sample_anatomy`), in normalised coordinates of the canonical
neck (face on the left, cervical spine on the right).

Domain randomisation (phantom v2, :class:`PhantomConfig`; :meth:`PhantomConfig.plain` turns it off): field of
view and magnification vary several-fold; either facing direction; head flexed, extended or tilted; shoulders as a
dark mass over C5-C7; skull base, teeth with fillings, hard palate, calcified laryngeal and tracheal cartilage;
low-contrast vertebrae with facets, unevenly spaced; burned-in text, a ruler or a calibration coin; 4:3 and 16:9
recordings letterboxed into the square frame.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from vfss_agglo_bundle.phantom.shapes import SKIN

__all__ = [
    "CENTRE",
    "DEFAULT_CONFIG",
    "KNOWN_STRUCTURES",
    "MAX_FILLINGS",
    "PHANTOM_VERSIONS",
    "PHARYNX_END",
    "PHARYNX_ENTRY",
    "UES_RAMP",
    "UES_TOP",
    "VERTEBRAE",
    "VERTEBRA_LEVELS",
    "PhantomConfig",
    "StudyAnatomy",
    "phantom_config",
    "phantom_tasks",
    "sample_anatomy",
]

VERTEBRAE: tuple[str, ...] = ("c1", "c2", "c3", "c4", "c5", "c6", "c7")
KNOWN_STRUCTURES: tuple[str, ...] = ("bolus", "pharynx", "mandible", "hyoid", "epiglottis", *VERTEBRAE)

CENTRE = np.array([0.5, 0.5])  # the image centre: a study's pose turns and scales the canonical neck about it
# Position of each vertebra's anterior-centre along the spine curve (0 = top of C1, 1 = bottom of C7).
VERTEBRA_LEVELS = np.array([0.03, 0.165, 0.305, 0.445, 0.585, 0.725, 0.865])
PHARYNX_ENTRY = 0.36  # spine level where the bolus enters the pharynx from the mouth
PHARYNX_END = 0.80  # spine level of the upper oesophageal sphincter (bottom of the pharynx label)
UES_TOP = 0.75  # spine level where the sphincter segment of the pharynx begins
UES_RAMP = 0.03  # phase the sphincter takes to open or close
MAX_FILLINGS = 6  # dental fillings a study can have


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
    vertebra_levels: np.ndarray = dataclasses.field(default_factory=lambda: VERTEBRA_LEVELS.copy())
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
        field_centre=CENTRE + u(-0.03, 0.03, 2),
        field_radius=u(*cfg.field_radius),
        motion=np.stack([cfg.motion * u(0.3, 1.0, 2), u(0.5, 2.0, 2), u(0, 2 * np.pi, 2)], axis=1),
        spine_top=np.array([0.50, 0.18]) + u(-0.02, 0.02, 2),
        spine_bottom=np.array([0.65, 0.87]) + u(-0.025, 0.02, 2),
        lordosis=u(*cfg.lordosis),
        vertebra_size=np.array([0.088, 0.074]) * u(0.92, 1.08),
        vertebra_jitter=np.stack([u(0.94, 1.06, 7), u(0.93, 1.07, 7), np.deg2rad(u(-5, 5, 7))], axis=1),
        skin_jitter=u(-0.02, 0.02, (len(SKIN), 2)),
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
        vertebra_levels=VERTEBRA_LEVELS + cfg.vertebra_spacing * u(-1, 1, 7),
        fillings=fillings,
        ruler=ruler if draws[5] < cfg.ruler_probability else None,
        coin=coin if draws[6] < cfg.coin_probability else None,
        text=text if draws[4] < cfg.text_probability else (),
    )
