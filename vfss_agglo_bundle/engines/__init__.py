"""MONAI/Ignite engines of the bundle."""

from vfss_agglo_bundle.engines.distill_trainer import DistillationTrainer, distill_logs

__all__ = ["DistillationTrainer", "distill_logs"]
