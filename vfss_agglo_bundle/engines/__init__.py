"""The bundle's own Ignite engines (MONAI ``Workflow`` subclasses)."""

from vfss_agglo_bundle.engines.distill_trainer import DistillationTrainer, distill_logs

__all__ = ["DistillationTrainer", "distill_logs"]
