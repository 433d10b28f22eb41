"""Runs made of stages: resumable stages with fingerprints from the resolved config, and run records."""

from vfss_agglo_bundle.workflow.fingerprint import describe, fingerprint
from vfss_agglo_bundle.workflow.records import RunRecord
from vfss_agglo_bundle.workflow.stages import Stage

__all__ = ["RunRecord", "Stage", "describe", "fingerprint"]
