"""vfss-agglo: agglomerative distillation of medical vision foundation models for VFSS segmentation."""

from vfss_agglo_bundle.data.tasks import DEFAULT_TASKS

__version__ = "0.9.0"

__all__ = ["DEFAULT_TASKS", "__version__"]
