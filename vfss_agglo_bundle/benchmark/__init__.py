"""Speed benchmark of the student against its teachers, and of the CPU inference settings (one job per module:
timing, machine description, the rows to time, the run, the report, the inference ablation, a video end to end,
the training step, the phantom's rendering speed, each teacher's cost and the store fill with one and two
processes)."""

from vfss_agglo_bundle.benchmark.ablation import inference_ablation
from vfss_agglo_bundle.benchmark.machine import describe_machine
from vfss_agglo_bundle.benchmark.measure import MIN_RUNS, Measurement, count_flops, count_params, measure
from vfss_agglo_bundle.benchmark.phantom_speed import phantom_speed
from vfss_agglo_bundle.benchmark.report import to_markdown, write_report
from vfss_agglo_bundle.benchmark.run import Entry, run_benchmark, run_targets, speed_ratios
from vfss_agglo_bundle.benchmark.targets import FULL_RANDOM, REAL, TEACHER_NAMES, TINY, teacher_targets
from vfss_agglo_bundle.benchmark.teacher_cost import store_fill_processes, teacher_cost
from vfss_agglo_bundle.benchmark.training import training_throughput
from vfss_agglo_bundle.benchmark.video import video_throughput

__all__ = [
    "FULL_RANDOM",
    "MIN_RUNS",
    "REAL",
    "TEACHER_NAMES",
    "TINY",
    "Entry",
    "Measurement",
    "count_flops",
    "count_params",
    "describe_machine",
    "inference_ablation",
    "measure",
    "phantom_speed",
    "run_benchmark",
    "run_targets",
    "speed_ratios",
    "store_fill_processes",
    "teacher_cost",
    "teacher_targets",
    "to_markdown",
    "training_throughput",
    "video_throughput",
    "write_report",
]
