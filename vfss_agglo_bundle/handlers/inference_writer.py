"""Writes what the `inferring` run produces: per-frame masks, overlay pictures, one overlay video per study and each
study's swallow kinematics."""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from vfss_agglo_bundle.data.formats import read_frame, write_frame, write_label
from vfss_agglo_bundle.data.transforms import remove_small_regions, restore_masks
from vfss_agglo_bundle.kinematics import FrameGeometry, analyse, frame_geometry
from vfss_agglo_bundle.kinematics.outputs import write_kinematics
from vfss_agglo_bundle.kinematics.steadying import STEADY_SECONDS, TemporalSmoother, steady_radius
from vfss_agglo_bundle.utils.io import atomic_path
from vfss_agglo_bundle.visualize import legend, overlay, save_png

logger = logging.getLogger(__name__)


class InferenceWriter:
    """Attach to an evaluator whose step output holds a ``pred`` ``[T,S,S]`` of probabilities per frame.

    With ``steady_seconds`` (steady video), each frame's probabilities are first averaged with its neighbours' in the
    study (:class:`~vfss_agglo_bundle.kinematics.steadying.TemporalSmoother`, a centred window of about
    ``steady_seconds`` at the study's frame rate, 3 frames when it is unknown): a frame is written ``radius`` frames
    late, at most ``2 * radius + 1`` frames of a study are held, and frames of a study must come in order, studies
    one after another (as ``inference_items`` lists them). Masks are the probabilities above 0.5.

    For each frame (named ``<study>/<frame:04d>``) writes, under ``output_dir``:
    ``masks/<study>/<frame>.nii.gz`` (the bundle's label format, at the frame's original size),
    optionally ``masks_png/<study>/<frame>_<task>.png``, and (``overlays``) ``overlays/<study>/<frame>.png``; at the
    end (with ``overlays``) one ``videos/<study>.gif`` (or ``.mp4``) of the overlays and, with ``kinematics``,
    ``kinematics/<study>.csv``, ``.json`` and ``.png`` (:mod:`vfss_agglo_bundle.kinematics`, measured on the masks
    at the frame's own size; the frame rate is the batch's ``fps`` entry, NaN when unknown). Existing outputs are
    refused, not overwritten: use a new ``output_dir``. The NIfTI masks are written on one background thread while
    the next batch is segmented (gzip and file creation release the GIL); a failed write stops the run at the next
    iteration, and all writes are done before the end-of-run outputs (on a crash, the writes under way finish before
    Python exits: each is atomic, no half-written file is left).

    Args:
        output_dir: output folder.
        tasks: task names (channel order).
        png_masks: also write one PNG mask per task.
        overlays: write an overlay picture per frame (and the overlay video); off for the fastest masks-and-numbers
            run.
        video_format: ``"gif"``, ``"mp4"`` or ``None`` (no video).
        video_fps: overlay video frame rate (``None``: the study's own, else 10).
        kinematics: measure each study's swallow kinematics.
        mm_per_px: calibration for the kinematics' millimetre values (``None``: none given).
        steady_seconds: length of the steadying window in seconds (``None`` or 0: off, each frame as predicted).
        min_region_area: task -> its regions smaller than this share of the frame are removed from the masks
            (:func:`~vfss_agglo_bundle.data.transforms.remove_small_regions`; ``None``: every region kept).
    """

    def __init__(
        self,
        output_dir: str,
        tasks: Sequence[str],
        png_masks: bool = False,
        overlays: bool = True,
        video_format: str | None = "gif",
        video_fps: float | None = None,
        kinematics: bool = True,
        mm_per_px: float | None = None,
        steady_seconds: float | None = STEADY_SECONDS,
        min_region_area: dict[str, float] | None = None,
    ) -> None:
        if video_format not in ("gif", "mp4", None):
            raise ValueError(f"video_format must be 'gif', 'mp4' or None, got {video_format!r}.")
        self.output_dir = Path(output_dir)
        self.tasks = list(tasks)
        self.png_masks = png_masks
        self.overlays = overlays
        self.video_format = video_format
        self.video_fps = video_fps
        self.kinematics = kinematics
        self.mm_per_px = mm_per_px
        self.steady_seconds = steady_seconds
        self.min_region_area = dict(min_region_area or {})
        self._study: str | None = None  # the study whose frames are being steadied
        self._smoother = TemporalSmoother(0)
        self._held: dict[int, dict] = {}  # frame -> what writing it needs, while the smoother holds it
        self._overlays: dict[str, list[Path]] = defaultdict(list)
        self._geometries: dict[str, dict[int, FrameGeometry]] = defaultdict(dict)
        self._fps: dict[str, float | None] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._writes: list[Future] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start_writer)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._steady_frames)
        engine.add_event_handler(Events.COMPLETED, self._flush_study)  # first: the last frames, then the rest
        engine.add_event_handler(Events.COMPLETED, self._finish_writes)
        engine.add_event_handler(Events.COMPLETED, self._write_videos)
        if self.kinematics:
            engine.add_event_handler(Events.COMPLETED, self._write_kinematics)

    def _start_writer(self, engine: Engine) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mask-writer")

    def _check_writes(self, wait: bool) -> None:
        """Re-raise the first failed mask write (``wait``: after all of them are done)."""
        pending = []
        for job in self._writes:
            if wait or job.done():
                job.result()
            else:
                pending.append(job)
        self._writes = pending

    def _finish_writes(self, engine: Engine) -> None:
        try:
            self._check_writes(wait=True)
        finally:
            self._pool.shutdown(wait=True)
            self._pool, self._writes = None, []

    def _steady_frames(self, engine: Engine) -> None:
        """Push the batch's frames through their study's smoother and write the frames that come out."""
        self._check_writes(wait=False)
        for item, data in zip(engine.state.output, engine.state.batch, strict=True):
            study, frame = str(data["study"]), int(data["frame"])
            fps = float(data["fps"]) if "fps" in data else math.nan
            if study != self._study:
                self._flush_study(engine)
                self._study, self._smoother = study, TemporalSmoother(steady_radius(fps, self.steady_seconds))
            keys = ("image_box", "image_shape", "image_frame", "image_path")
            self._held[frame] = {"fps": fps, **{key: data[key] for key in keys if key in data}}
            for index, probabilities in self._smoother.push(frame, item["pred"].detach().float().cpu().numpy()):
                self._write_frame(study, index, probabilities)

    def _flush_study(self, engine: Engine) -> None:
        for index, probabilities in self._smoother.flush():
            self._write_frame(self._study, index, probabilities)
        self._study = None

    def _write_frame(self, study: str, frame: int, probabilities: np.ndarray) -> None:
        """Write one frame from its model-space probabilities ``[T, S, S]``."""
        data = self._held.pop(frame)
        pred = torch.from_numpy(probabilities)
        masks = (restore_masks(pred, data["image_box"], data["image_shape"]) > 0.5).numpy().astype(np.uint8)
        if self.min_region_area:
            masks = remove_small_regions(masks, self.tasks, self.min_region_area)
        name = f"{study}/{frame:04d}"
        self._writes.append(self._pool.submit(write_label, self.output_dir / "masks" / f"{name}.nii.gz", masks))
        if self.png_masks:
            for task, mask in zip(self.tasks, masks, strict=True):
                write_frame(self.output_dir / "masks_png" / f"{name}_{task}.png", mask * 255)
        if self.overlays:
            path = self.output_dir / "overlays" / f"{name}.png"
            image = data["image_frame"].numpy() if "image_frame" in data else read_frame(data["image_path"])
            save_png(path, overlay(image, masks), overwrite=False)
            self._overlays[study].append(path)
        if self.kinematics:
            self._geometries[study][frame] = frame_geometry(masks, self.tasks)
            self._fps[study] = None if math.isnan(data["fps"]) else data["fps"]

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
            fps = self.video_fps or self._fps.get(study) or 10.0
            with atomic_path(path, overwrite=False, suffix=f".{self.video_format}") as tmp:
                if self.video_format == "gif":
                    iio.imwrite(tmp, np.stack(frames), duration=1000 / fps, loop=0)
                else:
                    iio.imwrite(tmp, np.stack(frames), fps=fps, codec="libx264")
            logger.info("overlay video of study %s (%d frames): %s", study, len(frames), path)
        self._overlays.clear()

    def _write_kinematics(self, engine: Engine) -> None:
        for study, by_frame in self._geometries.items():
            frames = sorted(by_frame)
            result = analyse([by_frame[f] for f in frames], self.tasks, self._fps.get(study), self.mm_per_px)
            if frames != list(range(len(frames))):
                result["flags"].append("frames are missing from the study: times assume consecutive frames")
            paths = write_kinematics(result, self.output_dir / "kinematics", study)
            swallows = result["swallows"]
            if swallows:
                m = swallows[0]["measures"]
                logger.info(
                    "kinematics of %s: %d swallow(s); first: hyoid peak displacement %.1f %%C2-4, constriction ratio "
                    "%.2f, pharyngeal transit %.2f %s -> %s",
                    study, len(swallows), m["hyoid_peak_displacement"], m["pharyngeal_constriction_ratio"],
                    m["pharyngeal_transit_s"], result["units"]["time"], paths["json"],
                )  # fmt: skip
            else:
                logger.info("kinematics of %s: %s -> %s", study, "; ".join(result["flags"]), paths["json"])
        self._geometries.clear()
