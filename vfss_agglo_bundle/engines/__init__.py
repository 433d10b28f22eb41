"""MONAI/Ignite engines of the bundle."""

from vfss_agglo_bundle.engines.distill_trainer import DistillationTrainer, distill_logs
from vfss_agglo_bundle.engines.distributed import shutdown_distributed

__all__ = ["DistillationTrainer", "distill_logs", "shutdown_distributed"]
