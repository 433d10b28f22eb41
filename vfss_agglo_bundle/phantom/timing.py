"""The swallow's timing: what moves how far at swallow phase ``t`` in [0, 1] (the clip's first to last frame).

Smooth ramps (:func:`smoothstep`, :func:`plateau`) drive the hyoid's elevation, the epiglottis's inversion, the
pharynx's constriction and the upper oesophageal sphincter's opening; the bolus moves along its path by the same
ramps (:func:`bolus_extent`), and :func:`ues_phases` inverts them to find when its head and tail pass the sphincter.
"""

from __future__ import annotations

import numpy as np
from vfss_agglo_bundle.phantom.anatomy import StudyAnatomy

__all__ = [
    "bolus_extent",
    "constriction_state",
    "inverse_smoothstep",
    "plateau",
    "smoothstep",
    "swallow_state",
    "ues_phases",
]


def smoothstep(x: np.ndarray | float) -> np.ndarray:
    """``3x^2 - 2x^3`` of ``x`` clipped to [0, 1] (any shape): 0 -> 0 and 1 -> 1, flat at both ends."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def plateau(t: float, start: float, stop: float, ramp: float) -> float:
    """0 before ``start``, rises over ``ramp`` to 1, falls back to 0 over ``ramp`` from ``stop``."""
    return float(smoothstep((t - start) / ramp) * (1 - smoothstep((t - stop) / ramp)))


def inverse_smoothstep(y: float) -> float:
    """The ``x`` in [0, 1] with ``smoothstep(x) == y`` (``y`` clipped to [0, 1])."""
    return float(0.5 - np.sin(np.arcsin(1 - 2 * np.clip(y, 0.0, 1.0)) / 3))


def swallow_state(a: StudyAnatomy, t: float) -> tuple[float, float]:
    """Hyoid elevation and epiglottis inversion in [0, 1] at phase ``t``."""
    end = a.swallow_onset + 0.85 * a.transit_time
    lift = plateau(t, a.swallow_onset + a.hyoid_delay, end, 0.08)
    tip = plateau(t, a.swallow_onset + 0.02, end - 0.02, 0.06)
    return lift, tip


def constriction_state(a: StudyAnatomy, t: float) -> float:
    """How far the pharynx has contracted behind the bolus, in [0, 1] at phase ``t``: a smooth pulse that peaks as
    the tail clears the hypopharynx (0.9 of the transit), so the maximum constriction has one frame."""
    peak = a.swallow_onset + 0.9 * a.transit_time
    return plateau(t, peak - 0.1, peak, 0.1)


def ues_phases(a: StudyAnatomy, oral: float, ues: float, total: float) -> tuple[float, float]:
    """Phases at which the bolus head reaches the sphincter (fully open) and its tail has passed it (closing).

    Inverts :func:`bolus_extent` at arc length ``ues``: the sphincter opens over ``UES_RAMP``
    (:mod:`~vfss_agglo_bundle.phantom.anatomy`) before the first and closes over ``UES_RAMP`` after the second.
    """
    tail0, head0 = 0.25 * oral, 0.92 * oral
    opening = inverse_smoothstep((ues - head0) / (total - head0)) / 1.5
    closing = inverse_smoothstep(((ues - tail0) / (total - tail0)) ** (1 / 1.3))
    return a.swallow_onset + opening * a.transit_time, a.swallow_onset + closing * a.transit_time


def bolus_extent(a: StudyAnatomy, t: float, oral: float, total: float) -> tuple[float, float] | None:
    """Arc-length interval (tail, head) of the bolus along its path, or None when no bolus is in view.

    ``oral``: arc length of the path in the mouth; ``total``: of the whole path (mouth to below the field).
    """
    if t < a.bolus_start:
        return None
    tail0, head0 = 0.25 * oral, 0.92 * oral
    p = (t - a.swallow_onset) / a.transit_time
    if p <= 0:
        return tail0, head0
    head = head0 + (total - head0) * smoothstep(1.5 * p)
    tail = tail0 + (total - tail0) * smoothstep(p) ** 1.3
    if total - tail < 1e-3:
        return None
    return tail, head
