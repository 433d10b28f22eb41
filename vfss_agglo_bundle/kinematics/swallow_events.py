"""The thresholds that define a swallow's events (docs/kinematics.md), in one place for the two rooms that apply
them: the phantom's ground truth (:mod:`vfss_agglo_bundle.phantom.truth`, on the simulator's geometry) and the
kinematics measured on masks (:mod:`vfss_agglo_bundle.kinematics.measures`), so that the truth and the measurement
cannot drift apart."""

from __future__ import annotations

import numpy as np

__all__ = ["INVERSION", "ONSET", "PEAK", "PLATEAU", "first_index"]

ONSET = 0.10  # HYB and swallow rest: displacement at most this fraction of the swallow's maximum
PEAK = 0.95  # peak hyoid position: first frame with displacement at least this fraction of the maximum
PLATEAU = 0.01  # maximum constriction: first frame within this fraction of the rest area of the least area
INVERSION = ((135.0, "complete"), (90.0, "partial"))  # epiglottis angle (degrees) -> category; below: "none"


def first_index(condition: np.ndarray, start: int = 0, stop: int | None = None) -> int | None:
    """Index of the first true element of ``condition[start:stop]`` (in ``condition``), or ``None``."""
    hits = np.flatnonzero(condition[start:stop])
    return None if len(hits) == 0 else int(hits[0]) + start
