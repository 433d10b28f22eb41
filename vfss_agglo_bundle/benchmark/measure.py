"""Timing, peak memory, FLOPs and parameter counts of one model call, measured the same way for every row.

Latency: median and 90th percentile of the wall time of one call after warm-up (CUDA synchronised); throughput:
frames per second at the median. Peak memory, from the first call of a batch size on: on the CPU the rise of the
process's resident-set high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``), on the GPU
``torch.cuda.max_memory_allocated`` above what was allocated before. FLOPs: ``torch.utils.flop_counter`` on the
first warm-up call (matmul, conv and attention only; one multiply-add counts 2).
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["MIN_RUNS", "Measurement", "count_flops", "count_params", "measure", "random_images", "start_memory_window"]

MIN_RUNS = 3


@dataclass
class Measurement:
    """Timing of one batch size: per-call latency in ms, frames per second at the median, peak memory in MiB."""

    batch: int
    median_ms: float
    p90_ms: float
    frames_per_s: float
    peak_memory_mib: float | None
    runs: int


def count_params(module: nn.Module) -> int:
    """Number of parameters (trainable or not) of ``module``."""
    return sum(p.numel() for p in module.parameters())


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` as counted by ``torch.utils.flop_counter.FlopCounterMode``."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_kib(field_name: str) -> int | None:
    try:
        match = re.search(rf"^{field_name}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def start_memory_window(device: torch.device) -> int | None:
    """Start a peak-memory window; returns the baseline in bytes (None where it cannot be measured)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set (Linux)
    except OSError:
        return None
    rss = _status_kib("VmRSS")
    return None if rss is None else rss * 1024


def _peak_mib(device: torch.device, baseline: int | None) -> float | None:
    if baseline is None:
        return None
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        hwm = _status_kib("VmHWM")
        if hwm is None:
            return None
        peak = hwm * 1024
    return max(peak - baseline, 0) / 2**20


def measure(
    fn: Callable[[], Any],
    batch: int,
    device: torch.device,
    warmup: int = 3,
    repeats: int = 30,
    max_seconds: float = 20.0,
    memory_baseline: int | None = None,
) -> Measurement:
    """Time ``fn`` (one call processes ``batch`` frames) after ``warmup`` calls.

    A warm-up call that takes over a second ends the warm-up (the next ones would not change anything). Timed calls
    stop after ``repeats`` calls, or once ``max_seconds`` have passed and at least ``MIN_RUNS`` calls were made.
    The peak memory covers the warm-up and timed calls (so the first call's allocations count), measured from
    ``memory_baseline`` (from :func:`start_memory_window`) when given, else from just before the warm-up.
    """
    baseline = start_memory_window(device) if memory_baseline is None else memory_baseline
    for _ in range(warmup):
        start = time.perf_counter()
        fn()
        _synchronize(device)
        if time.perf_counter() - start > 1.0:
            break
    times: list[float] = []
    begin = time.perf_counter()
    while len(times) < max(repeats, 1) and (len(times) < MIN_RUNS or time.perf_counter() - begin < max_seconds):
        start = time.perf_counter()
        fn()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    p90 = sorted(times)[min(len(times) - 1, round(0.9 * (len(times) - 1)))]
    return Measurement(
        batch=batch,
        median_ms=median * 1e3,
        p90_ms=p90 * 1e3,
        frames_per_s=batch / median,
        peak_memory_mib=_peak_mib(device, baseline),
        runs=len(times),
    )


def random_images(batch: int, image_size: int, device: torch.device) -> torch.Tensor:
    """Seeded canonical images ``[batch, 1, S, S]`` in [0, 1]."""
    generator = torch.Generator().manual_seed(batch)
    return torch.rand(batch, 1, image_size, image_size, generator=generator).to(device)
