"""The study: does agglomerating several teachers help, on phantom v2, at twice the default run's epochs (plan,
runner, report)."""

from vfss_agglo_bundle.study.plan import ALL_TEACHERS, PROTOCOLS, Choices, Run, choose, plan_runs, run_fingerprint
from vfss_agglo_bundle.study.runner import load_summaries, override_words, run_logged, run_one, run_study, summary_of

__all__ = [
    "ALL_TEACHERS",
    "PROTOCOLS",
    "Choices",
    "Run",
    "choose",
    "load_summaries",
    "override_words",
    "plan_runs",
    "run_fingerprint",
    "run_logged",
    "run_one",
    "run_study",
    "summary_of",
]
