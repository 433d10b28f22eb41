"""How fast the phantom renders: frames (image and labels) per second, per phantom version, with the CPU time
beside the wall time (the simulator is single-threaded numpy and scipy.ndimage: CPU / wall ~ 1 means one core)."""

from __future__ import annotations

import time
from typing import Any

from vfss_agglo_bundle.benchmark.machine import describe_machine
from vfss_agglo_bundle.phantom.anatomy import PHANTOM_VERSIONS, phantom_config
from vfss_agglo_bundle.phantom.render import simulate_study

__all__ = ["phantom_speed"]


def phantom_speed(image_size: int = 256, studies: int = 8, frames: int = 24) -> dict[str, Any]:
    """Frames/s of :func:`~vfss_agglo_bundle.phantom.render.simulate_study` (image + 12 labels) for ``studies``
    studies of ``frames`` frames per phantom version.

    Returns ``{"machine", "settings", "rows": [{"phantom", "frames", "seconds", "cpu_seconds", "frames_per_s"}]}``.
    """
    rows = []
    for version in PHANTOM_VERSIONS:
        cfg = phantom_config(version, image_size=image_size, num_frames=frames)
        simulate_study(0, phantom_config(version, image_size=image_size, num_frames=2))  # imports, first calls
        started, cpu = time.perf_counter(), time.process_time()
        for seed in range(studies):
            simulate_study(seed, cfg)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        rows.append({"phantom": version, "frames": studies * frames, "seconds": seconds, "cpu_seconds": cpu,
                     "frames_per_s": studies * frames / seconds})  # fmt: skip
    settings = {"image_size": image_size, "studies": studies, "frames": frames}
    return {"machine": describe_machine(), "settings": settings, "rows": rows}
