"""Swallow kinematics and timing from the masks of one video: the spine frame per frame, signals, events, measures."""

from vfss_agglo_bundle.kinematics.frame import FrameGeometry, frame_geometry
from vfss_agglo_bundle.kinematics.measures import NOT_COMPUTABLE, UNITS, analyse

__all__ = ["NOT_COMPUTABLE", "UNITS", "FrameGeometry", "analyse", "frame_geometry"]
