"""The bundle's own Ignite engines (MONAI ``Workflow`` subclasses)."""

from vfss_agglo_bundle.engines.distill_trainer import DistillationTrainer, distill_logs
from vfss_agglo_bundle.engines.inferers import AutocastInferer, fast_bfloat16

__all__ = ["AutocastInferer", "DistillationTrainer", "distill_logs", "fast_bfloat16"]
