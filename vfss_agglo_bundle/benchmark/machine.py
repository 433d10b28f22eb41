"""What a benchmark ran on: CPU model, cores, threads, load, library versions and GPUs."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path
from typing import Any

import timm
import torch

__all__ = ["OPENMP_ENV", "cpu_model", "describe_machine"]

OPENMP_ENV: tuple[str, ...] = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def cpu_model() -> str:
    try:
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
    except OSError:
        match = None
    return match.group(1).strip() if match else platform.processor() or "unknown"


def describe_machine() -> dict[str, Any]:
    """CPU model, cores, threads, load, library versions and GPUs of this process's machine."""
    try:
        import onnxruntime

        ort_version: str | None = onnxruntime.__version__
    except ImportError:
        ort_version = None
    gpus = []
    if torch.cuda.is_available():
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "openmp_env": {k: os.environ[k] for k in OPENMP_ENV if k in os.environ},
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "gpus": gpus,
        "cuda": torch.version.cuda if gpus else None,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "onnxruntime": ort_version,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
