"""Distillation losses, target standardisation (PHI-S) and teacher loss balancing."""

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
from vfss_agglo_bundle.losses.standardize import PHIStandardizer, hadamard_matrix

__all__ = [
    "BALANCERS",
    "LOSSES",
    "AttentionBalancer",
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
