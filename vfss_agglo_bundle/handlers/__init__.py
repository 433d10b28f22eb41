"""Ignite handlers of the bundle: progress bars, seeding, resume checkpoints, reports and inference outputs."""

from vfss_agglo_bundle.handlers.checkpoint import BestCheckpoint, ModelLoader, ResumeCheckpoint
from vfss_agglo_bundle.handlers.inference_writer import InferenceWriter
from vfss_agglo_bundle.handlers.loss_guard import LossGuard
from vfss_agglo_bundle.handlers.memory import ReleaseMemory
from vfss_agglo_bundle.handlers.progress import ProgressHandler
from vfss_agglo_bundle.handlers.report import MultiTaskReport
from vfss_agglo_bundle.handlers.seeding import EpochSeed

__all__ = [
    "BestCheckpoint",
    "EpochSeed",
    "InferenceWriter",
    "LossGuard",
    "ModelLoader",
    "MultiTaskReport",
    "ProgressHandler",
    "ReleaseMemory",
    "ResumeCheckpoint",
]
