"""Distillation losses, target standardisation (PHI-S), teacher loss balancing and the segmentation loss."""

from vfss_agglo_bundle.losses.balancing import (
    BALANCERS,
    AttentionBalancer,
    FixedBalancer,
    LossBalancer,
    MLPBalancer,
    UncertaintyBalancer,
    build_balancer,
    check_balancing,
)
from vfss_agglo_bundle.losses.distill import LOSSES, DistillationLoss, cosine, cosine_smooth_l1, get_loss, mse
from vfss_agglo_bundle.losses.segmentation import DiceBCELoss
from vfss_agglo_bundle.losses.standardize import PHIStandardizer, hadamard_matrix

__all__ = [
    "BALANCERS",
    "LOSSES",
    "AttentionBalancer",
    "DiceBCELoss",
    "DistillationLoss",
    "FixedBalancer",
    "LossBalancer",
    "MLPBalancer",
    "PHIStandardizer",
    "UncertaintyBalancer",
    "build_balancer",
    "check_balancing",
    "cosine",
    "cosine_smooth_l1",
    "get_loss",
    "hadamard_matrix",
    "mse",
]
