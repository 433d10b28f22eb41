"""Student encoder, distillation adaptors, light decoder and the segmentation network."""

from vfss_agglo_bundle.networks.adaptors import (
    DenseAdaptor,
    DistillationModel,
    DistillationOutput,
    FeatureFusion,
    HeadShape,
    SummaryAdaptor,
    resize_to_grid,
)
from vfss_agglo_bundle.networks.decoder import LightDecoder
from vfss_agglo_bundle.networks.segmenter import VFSSSegmenter
from vfss_agglo_bundle.networks.student import SUPPORTED_BACKBONES, StudentEncoder, check_backbone, identify_backbone

__all__ = [
    "DenseAdaptor",
    "DistillationModel",
    "DistillationOutput",
    "FeatureFusion",
    "HeadShape",
    "LightDecoder",
    "SUPPORTED_BACKBONES",
    "StudentEncoder",
    "SummaryAdaptor",
    "VFSSSegmenter",
    "check_backbone",
    "identify_backbone",
    "resize_to_grid",
]
