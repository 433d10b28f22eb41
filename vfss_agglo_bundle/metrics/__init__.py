"""The multi-task segmentation metric (per-task Dice / IoU / HD95, empty masks scored on purpose)."""

from vfss_agglo_bundle.metrics.multitask import METRICS, MultiTaskSegMetrics, segmentation_scores

__all__ = ["METRICS", "MultiTaskSegMetrics", "segmentation_scores"]
