"""Memory of `inferring` over long and large videos: a soak, not a timing.

The run is the real ``configs/inference.json`` with its default outputs (NIfTI masks, an overlay PNG per frame, the
overlay GIF, the kinematics) in a child process (``python -m monai.bundle run inferring``), so its memory is its own.
While it runs, its resident memory (``VmRSS``) is sampled with the number of overlay pictures written so far; the
report gives the peak (``VmHWM``, the kernel's high-water mark) and the growth between the first and the last
thousand frames (median resident memory while each was written).

The video is a phantom swallow looped to ``num_frames`` frames, letterboxed into ``width`` x ``height``, written
once as H.264 (``preset ultrafast``) and kept in ``video_dir`` for the next run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm
from vfss_agglo_bundle.benchmark.machine import describe_machine
from vfss_agglo_bundle.data.tasks import DEFAULT_TASKS
from vfss_agglo_bundle.data.video import write_video
from vfss_agglo_bundle.networks.segmenter import VFSSSegmenter
from vfss_agglo_bundle.phantom.anatomy import PhantomConfig
from vfss_agglo_bundle.phantom.render import simulate_study

__all__ = ["inference_memory", "write_soak_video"]

BUNDLE_ROOT = Path(__file__).resolve().parents[2]
LOOP_FRAMES = 120  # phantom frames rendered once and looped
WINDOW = 1000  # frames in the first and last windows compared


def write_soak_video(path: Path, num_frames: int, width: int, height: int, fps: float = 30.0) -> Path:
    """A phantom swallow of ``LOOP_FRAMES`` frames, looped to ``num_frames``, letterboxed into ``width`` x ``height``
    (grey bars), as H.264 MP4; kept when it exists already."""
    if path.exists():
        return path
    side = min(width, height)
    cfg = PhantomConfig(image_size=256, num_frames=LOOP_FRAMES, duration_s=(LOOP_FRAMES - 1) / fps)
    loop = []
    for image, _ in simulate_study(0, cfg, ("bolus",)):
        canvas = np.full((height, width), 40, np.uint8)
        top, left = (height - side) // 2, (width - side) // 2
        canvas[top : top + side, left : left + side] = np.asarray(Image.fromarray(image).resize((side, side)))
        loop.append(canvas)
    frames = (loop[i % LOOP_FRAMES] for i in range(num_frames))
    bar = tqdm(frames, total=num_frames, desc=f"writing {path.name}", unit="frame")
    return write_video(path, bar, fps, options={"preset": "ultrafast"})


def _status(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of a process in bytes (empty once it has ended)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    fields = (line.split() for line in lines if line.startswith(("VmRSS:", "VmHWM:")))
    return {f[0].rstrip(":"): int(f[1]) * 1024 for f in fields}


def _count(folder: Path) -> int:
    try:
        return sum(1 for _ in os.scandir(folder))
    except FileNotFoundError:
        return 0


def inference_memory(
    video: Path, work_dir: Path, checkpoint: str | os.PathLike | None = None, sample_s: float = 1.0
) -> dict[str, Any]:
    """Run `inferring` with default settings on ``video`` in a child process and sample its memory.

    Returns ``{"frames", "seconds", "peak_rss_mb", "first_window_mb", "last_window_mb", "growth_mb", "samples"}``;
    ``samples`` are ``[seconds, frames written, RSS MB]``.
    """
    work_dir = Path(work_dir)
    (work_dir / "models").mkdir(parents=True, exist_ok=True)
    model = work_dir / "models" / "model.pt"
    if checkpoint is not None:
        model.write_bytes(Path(checkpoint).read_bytes())
    elif not model.exists():
        torch.save(VFSSSegmenter("efficientvit_b0", num_classes=len(DEFAULT_TASKS)).state_dict(), model)
    out = work_dir / "out"
    command = [sys.executable, "-m", "monai.bundle", "run", "inferring", "--config_file",
               str(BUNDLE_ROOT / "configs" / "inference.json"), "--bundle_root", str(work_dir), "--input", str(video),
               "--output_dir", str(out)]  # fmt: skip
    log = work_dir / "inferring.log"
    started, samples, peak = time.perf_counter(), [], 0
    with log.open("w") as sink:
        child = subprocess.Popen(command, cwd=BUNDLE_ROOT, stdout=sink, stderr=subprocess.STDOUT)
        while child.poll() is None:
            status = _status(child.pid)
            if status:
                peak = max(peak, status.get("VmHWM", 0))
                written = _count(out / "overlays" / video.stem)
                samples.append([time.perf_counter() - started, written, status.get("VmRSS", 0) / 2**20])
            time.sleep(sample_s)
    if child.returncode != 0:
        raise RuntimeError(f"inferring failed (exit {child.returncode}); its log: {log}\n{log.read_text()[-3000:]}")
    frames = _count(out / "masks" / video.stem)
    first = [rss for _, n, rss in samples if 0 < n <= WINDOW]
    last = [rss for _, n, rss in samples if frames - WINDOW < n <= frames]
    first_mb = float(np.median(first)) if first else float("nan")
    last_mb = float(np.median(last)) if last else float("nan")
    return {"frames": frames, "seconds": time.perf_counter() - started, "peak_rss_mb": peak / 2**20,
            "first_window_mb": first_mb, "last_window_mb": last_mb, "growth_mb": last_mb - first_mb,
            "gif_bytes": (out / "videos" / f"{video.stem}.gif").stat().st_size, "samples": samples}  # fmt: skip


def soak(
    num_frames: int = 10_000,
    width: int = 1512,
    height: int = 920,
    big_frames: int = 120,
    big_width: int = 3840,
    big_height: int = 2160,
    video_dir: str | os.PathLike = "eval/benchmark",
    checkpoint: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Peak and growth of `inferring`'s memory on a ``num_frames`` video of ``width`` x ``height``, and on a
    ``big_frames`` video of ``big_width`` x ``big_height`` (4K); ``0`` frames skips one."""
    rows = {}
    for name, (frames, w, h) in {
        "long": (num_frames, width, height),
        "4K": (big_frames, big_width, big_height),
    }.items():
        if not frames:
            continue
        video = write_soak_video(Path(video_dir) / f"soak_{w}x{h}_{frames}.mp4", frames, w, h)
        with tempfile.TemporaryDirectory(prefix="vfss-soak-") as tmp:
            rows[name] = {"video": str(video), "width": w, "height": h,
                          **inference_memory(video, Path(tmp), checkpoint)}  # fmt: skip
    return {"machine": describe_machine(), "rows": rows}
