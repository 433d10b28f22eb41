"""End-to-end throughput of `inferring` on a video file: decode -> segment -> masks -> kinematics files.

The video is a phantom swallow (``num_frames`` frames at ``fps``) written as H.264 MP4; the segmenter has random
weights in the bundle's ``models/model.pt`` format, or a trained checkpoint (speed does not depend on the weights,
but the kinematics only have a spine to measure with a trained model's masks). The run is the real
``configs/inference.json`` in this process (``monai.bundle.run``), so the time covers what a user waits for after
Python has started: parsing the config, decoding the video into memory, segmenting, writing the masks and the
kinematics.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from vfss_agglo_bundle.benchmark.machine import describe_machine
from vfss_agglo_bundle.data.tasks import DEFAULT_TASKS
from vfss_agglo_bundle.data.video import write_video
from vfss_agglo_bundle.networks.segmenter import VFSSSegmenter
from vfss_agglo_bundle.phantom.anatomy import PhantomConfig
from vfss_agglo_bundle.phantom.render import simulate_study
from vfss_agglo_bundle.utils.io import read_json

__all__ = ["VARIANTS", "video_throughput", "write_phantom_video"]

BUNDLE_ROOT = Path(__file__).resolve().parents[2]
VARIANTS: dict[str, dict[str, Any]] = {  # name -> inference.json overrides
    "masks + kinematics (no overlay pictures or video)": {"overlays": False, "video_format": None},
    "default outputs (+ overlay PNG per frame, overlay GIF)": {},
}


def write_phantom_video(
    path: str | os.PathLike, num_frames: int = 300, image_size: int = 256, fps: float = 30.0
) -> Path:
    """A phantom swallow of ``num_frames`` frames as an MP4 at ``fps`` frames/s; returns its path."""
    cfg = PhantomConfig(image_size=image_size, num_frames=num_frames, duration_s=(num_frames - 1) / fps)
    return write_video(path, (image for image, _ in simulate_study(0, cfg, ("bolus",))), fps)


def video_throughput(
    num_frames: int = 300,
    image_size: int = 256,
    fps: float = 30.0,
    student: str = "efficientvit_b0",
    threads: int = 2,
    variants: dict[str, dict[str, Any]] | None = None,
    checkpoint: str | os.PathLike | None = None,
    repeats: int = 3,
) -> dict[str, Any]:
    """Seconds and frames/s of `inferring` on one ``image_size`` video of ``num_frames`` frames, per output variant:
    the median of ``repeats`` runs (each into a new output folder; the first also pays one-off imports).

    Returns ``{"machine", "settings", "rows": [{"variant", "seconds", "runs_s", "frames_per_s", "swallows"}]}``.
    """
    from monai.bundle import run as bundle_run

    torch.set_num_threads(int(threads))
    rows = []
    with tempfile.TemporaryDirectory(prefix="vfss-video-bench-") as tmp:
        root = Path(tmp)
        (root / "models").mkdir()
        if checkpoint is None:
            network = VFSSSegmenter(student, num_classes=len(DEFAULT_TASKS))
            torch.save(network.state_dict(), root / "models" / "model.pt")
        else:
            shutil.copy2(checkpoint, root / "models" / "model.pt")
        video = write_phantom_video(root / "swallow.mp4", num_frames, image_size, fps)
        for k, (name, overrides) in enumerate((variants or VARIANTS).items()):
            runs = []
            for r in range(max(1, int(repeats))):
                out = root / f"out{k}-{r}"
                started = time.perf_counter()
                bundle_run(
                    "inferring",
                    config_file=str(BUNDLE_ROOT / "configs" / "inference.json"),
                    bundle_root=str(root),
                    input=str(video),
                    output_dir=str(out),
                    student=student,
                    image_size=image_size,
                    **overrides,
                )
                runs.append(time.perf_counter() - started)
            seconds = float(np.median(runs))
            kinematics = read_json(out / "kinematics" / "swallow.json")
            rows.append({"variant": name, "seconds": seconds, "runs_s": runs, "frames_per_s": num_frames / seconds,
                         "swallows": len(kinematics["swallows"]), "fps_read": kinematics["fps"]})  # fmt: skip
    settings = {"num_frames": num_frames, "image_size": image_size, "fps": fps, "student": student, "threads": threads,
                "repeats": int(repeats), "checkpoint": None if checkpoint is None else str(checkpoint)}  # fmt: skip
    return {"machine": describe_machine(), "settings": settings, "rows": rows}
