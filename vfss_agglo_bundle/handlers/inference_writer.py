"""Writes what the `inferring` run produces: per-frame masks, overlay pictures and one overlay video per study."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch.nn.functional as F
from ignite.engine import Engine, Events
from vfss_agglo_bundle.data.formats import read_frame, write_frame, write_label
from vfss_agglo_bundle.utils.io import atomic_path
from vfss_agglo_bundle.visualize import legend, overlay, save_png

logger = logging.getLogger(__name__)


class InferenceWriter:
    """Attach to an evaluator whose step output holds a binary ``pred`` ``[T,S,S]`` per frame.

    For each frame (named ``<study>/<frame:04d>``) writes, under ``output_dir``:
    ``masks/<study>/<frame>.nii.gz`` (the bundle's label format, at the frame's original size),
    optionally ``masks_png/<study>/<frame>_<task>.png``, and ``overlays/<study>/<frame>.png``; at the end one
    ``videos/<study>.gif`` (or ``.mp4``) of the overlays. Existing outputs are refused, not overwritten: use a new
    ``output_dir``.

    Args:
        output_dir: output folder.
        tasks: task names (channel order).
        png_masks: also write one PNG mask per task.
        video_format: ``"gif"``, ``"mp4"`` or ``None`` (no video).
        fps: video frame rate.
    """

    def __init__(
        self,
        output_dir: str,
        tasks: Sequence[str],
        png_masks: bool = False,
        video_format: str | None = "gif",
        fps: int = 10,
    ) -> None:
        if video_format not in ("gif", "mp4", None):
            raise ValueError(f"video_format must be 'gif', 'mp4' or None, got {video_format!r}.")
        self.output_dir = Path(output_dir)
        self.tasks = list(tasks)
        self.png_masks = png_masks
        self.video_format = video_format
        self.fps = fps
        self._overlays: dict[str, list[Path]] = defaultdict(list)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._write_frames)
        engine.add_event_handler(Events.COMPLETED, self._write_videos)

    def _write_frames(self, engine: Engine) -> None:
        for item, data in zip(engine.state.output, engine.state.batch, strict=True):
            study, frame = str(data["study"]), int(data["frame"])
            height, width = (int(v) for v in data["image_shape"])
            pred = item["pred"].detach().float().cpu()
            pred = F.interpolate(pred[None], size=(height, width), mode="nearest-exact")[0] > 0.5
            masks = pred.numpy().astype(np.uint8)
            name = f"{study}/{frame:04d}"
            write_label(self.output_dir / "masks" / f"{name}.nii.gz", masks)
            if self.png_masks:
                for task, mask in zip(self.tasks, masks, strict=True):
                    write_frame(self.output_dir / "masks_png" / f"{name}_{task}.png", mask * 255)
            picture = overlay(read_frame(data["image_path"]), masks)
            path = self.output_dir / "overlays" / f"{name}.png"
            save_png(path, picture, overwrite=False)
            self._overlays[study].append(path)

    def _write_videos(self, engine: Engine) -> None:
        if self.video_format is None:
            return
        import imageio.v3 as iio
        from PIL import Image

        for study, paths in self._overlays.items():
            frames = [np.asarray(Image.open(p)) for p in sorted(paths)]
            strip = legend(self.tasks, frames[0].shape[1])
            frames = [np.concatenate([f, strip]) for f in frames]
            if self.video_format == "mp4":  # even sizes for yuv420p
                frames = [f[: f.shape[0] // 2 * 2, : f.shape[1] // 2 * 2] for f in frames]
            path = self.output_dir / "videos" / f"{study}.{self.video_format}"
            with atomic_path(path, overwrite=False, suffix=f".{self.video_format}") as tmp:
                if self.video_format == "gif":
                    iio.imwrite(tmp, np.stack(frames), duration=1000 / self.fps, loop=0)
                else:
                    iio.imwrite(tmp, np.stack(frames), fps=self.fps, codec="libx264")
            logger.info("overlay video of study %s (%d frames): %s", study, len(frames), path)
        self._overlays.clear()
