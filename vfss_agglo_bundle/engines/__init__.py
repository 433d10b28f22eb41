"""The bundle's own Ignite engines (MONAI ``Workflow`` subclasses)."""

from vfss_agglo_bundle.engines.distill_trainer import DistillationTrainer, distill_logs
from vfss_agglo_bundle.engines.inferers import AutocastInferer, fast_bfloat16
from vfss_agglo_bundle.engines.low_res import LowResEpochs, downsample_pair

__all__ = ["AutocastInferer", "DistillationTrainer", "LowResEpochs", "distill_logs", "downsample_pair", "fast_bfloat16"]
