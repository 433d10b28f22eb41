"""The speed benchmark run: every row (:mod:`~vfss_agglo_bundle.benchmark.targets`) timed on every device.

Everything is measured in one process and one run: on a shared machine timings swing 2-3x between runs, so only
ratios measured together are quoted. How a call is timed, and its memory and FLOPs counted:
:mod:`~vfss_agglo_bundle.benchmark.measure`.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from vfss_agglo_bundle.benchmark.machine import describe_machine
from vfss_agglo_bundle.benchmark.measure import (
    Measurement,
    count_flops,
    count_params,
    measure,
    random_images,
    start_memory_window,
)
from vfss_agglo_bundle.benchmark.targets import (
    TEACHER_NAMES,
    Target,
    distill_step_targets,
    student_targets,
    teacher_targets,
)
from vfss_agglo_bundle.data.tasks import NUM_DEFAULT_TASKS

__all__ = ["STUDENT_GROUPS", "Entry", "run_benchmark", "run_targets", "speed_ratios"]

logger = logging.getLogger(__name__)

STUDENT_GROUPS: tuple[str, ...] = ("student", "student (optimized)", "onnxruntime")


@dataclass
class Entry:
    """One row of the benchmark table."""

    name: str
    group: str
    weights: str
    device: str
    input: str
    params: int
    gflops_per_frame: float | None
    measurements: list[Measurement] = field(default_factory=list)
    note: str = ""

    def at_batch(self, batch: int) -> Measurement | None:
        return next((m for m in self.measurements if m.batch == batch), None)


def run_targets(
    targets: Sequence[Target],
    devices: Sequence[str | torch.device],
    batches: Sequence[int] = (1, 8),
    image_size: int = 256,
    warmup: int = 3,
    repeats: int = 30,
    max_seconds: float = 20.0,
    slow_seconds: float = 30.0,
) -> list[Entry]:
    """Time every target on every device (one model in memory at a time) and return one ``Entry`` per pair.

    A larger batch is skipped (and the row says so) when the smallest batch predicts a call over ``slow_seconds``.
    """
    entries = []
    pairs = [(t, torch.device(d)) for t in targets for d in devices]
    runs = [(t, d) for t, d in pairs if not (t.cpu_only and d.type != "cpu")]
    for i, (target, device) in enumerate(runs, 1):
        logger.info("[%d/%d] %s / %s (%s) on %s", i, len(runs), target.group, target.name, target.weights, device)
        start = time.perf_counter()
        built = target.build(device)
        params = count_params(built.module)
        entry = Entry(target.name, target.group, target.weights, str(device), built.input, params, None)
        notes = [target.note] if target.note else []
        context = torch.inference_mode if target.inference else nullcontext
        for batch in target.batches or tuple(batches):
            first = entry.measurements[0] if entry.measurements else None
            counted = first is not None
            if first is not None and first.median_ms / 1e3 / first.batch * batch > slow_seconds:
                notes.append(f"batch {batch} skipped (over {slow_seconds:g} s a call)")
                continue
            images = random_images(batch, image_size, device)
            baseline = start_memory_window(device)
            with context():
                if not counted:  # the FLOP count doubles as the first warm-up call
                    flops = count_flops(lambda b=built, x=images: b.forward(x))
                    entry.gflops_per_frame = flops / batch / 1e9 if flops else None
                entry.measurements.append(
                    measure(
                        lambda b=built, x=images: b.forward(x), batch, device, warmup, repeats, max_seconds, baseline
                    )
                )
            m = entry.measurements[-1]
            logger.info(
                "    batch %d: median %.1f ms, p90 %.1f ms, %.1f frames/s", batch, m.median_ms, m.p90_ms, m.frames_per_s
            )
        entry.note = "; ".join(notes)
        entries.append(entry)
        logger.info("    done in %.0f s", time.perf_counter() - start)
        del built
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return entries


def speed_ratios(entries: Sequence[Entry], batch: int = 1) -> dict[str, dict[str, dict[str, float]]]:
    """``{device: {student row: {teacher: teacher median / student median}}}`` at ``batch``.

    Student rows are named ``"<backbone> [<group>]"``; only pairs measured at that batch on that device appear.
    """
    ratios: dict[str, dict[str, dict[str, float]]] = {}
    for device in dict.fromkeys(e.device for e in entries):
        teachers = [(e.name, e.at_batch(batch)) for e in entries if e.device == device and e.group == "teacher"]
        for student in (e for e in entries if e.device == device and e.group in STUDENT_GROUPS):
            mine = student.at_batch(batch)
            if mine is None:
                continue
            row = {name: m.median_ms / mine.median_ms for name, m in teachers if m is not None}
            ratios.setdefault(device, {})[f"{student.name} [{student.group}]"] = row
    return ratios


def run_benchmark(
    backbones: Sequence[str],
    teachers: Sequence[str] = TEACHER_NAMES,
    teacher_dir: str | os.PathLike | None = None,
    full_size_random: bool = False,
    include_medsam: bool = False,
    image_size: int = 256,
    batch_size: int = 8,
    num_classes: int = NUM_DEFAULT_TASKS,
    threads: int = 2,
    devices: Sequence[str] | None = None,
    optimized: bool = True,
    onnx: bool = True,
    onnx_dynamo: bool = True,
    distill: bool = True,
    warmup: int = 3,
    repeats: int = 30,
    max_seconds: float = 20.0,
    slow_seconds: float = 30.0,
) -> dict[str, Any]:
    """The whole benchmark in this process: students, teachers, distillation steps, on the CPU and (when present, or
    as ``devices`` says) the GPU, at batch 1 and ``batch_size``. Returns the report (see :func:`write_report`)."""
    torch.set_num_threads(int(threads))
    if devices is None:
        devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    machine = describe_machine()
    targets = student_targets(backbones, num_classes, image_size, optimized, onnx, onnx_dynamo, threads)
    targets += teacher_targets(teachers, teacher_dir, full_size_random, include_medsam, image_size)
    if distill and backbones:
        targets += distill_step_targets(backbones[0], image_size, batch_size, online="litemedsam" in teachers)
    batches = tuple(sorted({1, int(batch_size)}))
    entries = run_targets(targets, devices, batches, image_size, warmup, repeats, max_seconds, slow_seconds)
    return {
        "started": started,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine,
        "settings": {
            "image_size": image_size,
            "batches": list(batches),
            "threads": threads,
            "devices": [str(d) for d in devices],
            "warmup": warmup,
            "repeats": repeats,
            "max_seconds": max_seconds,
            "slow_seconds": slow_seconds,
            "num_classes": num_classes,
            "teacher_dir": None if teacher_dir is None else str(teacher_dir),
            "full_size_random": full_size_random,
            "include_medsam": include_medsam,
        },
        "entries": [asdict(e) for e in entries],
        "ratios_batch1": speed_ratios(entries, 1),
    }
