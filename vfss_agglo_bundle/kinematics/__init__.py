"""Swallow kinematics and timing from the masks of one video: the spine frame per frame, signals, events, measures."""

from vfss_agglo_bundle.kinematics.frame import FrameGeometry, frame_geometry
from vfss_agglo_bundle.kinematics.measures import NOT_COMPUTABLE, UNITS, analyse
from vfss_agglo_bundle.kinematics.steadying import STEADY_SECONDS, TemporalSmoother, steady_radius

__all__ = [
    "NOT_COMPUTABLE",
    "STEADY_SECONDS",
    "UNITS",
    "FrameGeometry",
    "TemporalSmoother",
    "analyse",
    "frame_geometry",
    "steady_radius",
]
