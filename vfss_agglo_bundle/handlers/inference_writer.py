"""Writes what the `inferring` run produces: per-frame masks, overlay pictures, one overlay video per study and each
study's swallow kinematics."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from PIL import Image
from vfss_agglo_bundle.data.formats import read_frame, write_frame, write_label
from vfss_agglo_bundle.data.transforms import remove_small_regions, restore_masks
from vfss_agglo_bundle.data.video import VideoWriter
from vfss_agglo_bundle.kinematics import FrameGeometry, analyse, frame_geometry
from vfss_agglo_bundle.kinematics.outputs import write_kinematics
from vfss_agglo_bundle.kinematics.steadying import STEADY_SECONDS, TemporalSmoother, steady_radius
from vfss_agglo_bundle.utils.io import atomic_path
from vfss_agglo_bundle.visualize import legend, overlay, save_png

logger = logging.getLogger(__name__)

GIF_WIDTH = 480  # overlay GIFs are scaled down to at most this width
GIF_FRAMES = 300  # and hold at most this many frames (every 2nd, 4th, ... frame of a longer study)
PENDING_WRITES = 4  # mask writes queued at most (16.7 MB each at 1512 x 920); segmenting waits beyond this
OUTPUT_FOLDERS = ("masks", "masks_png", "overlays", "videos", "kinematics")


class OverlayVideo:
    """One study's overlay video, built as its frames come, in bounded memory.

    ``"mp4"``: every full-size frame is encoded as it comes (:class:`~vfss_agglo_bundle.data.video.VideoWriter`).
    ``"gif"``: frames are scaled down to at most ``GIF_WIDTH`` wide, reduced to 256 colours (one byte a pixel, as
    the GIF stores them) and at most ``GIF_FRAMES`` are kept (every ``stride``-th: when the limit is reached, every
    other kept frame is dropped and the stride doubles): at most 300 x 480 x 330 bytes, 48 MB. The GIF, at
    ``fps / stride``, is written by :meth:`close`. Each frame gets the task legend below it.
    """

    def __init__(self, path: Path, tasks: Sequence[str], fps: float, video_format: str) -> None:
        self.path, self.tasks, self.fps, self.format = path, list(tasks), fps, video_format
        self.frames = 0
        self.stride = 1
        self._kept: list[Image.Image] = []
        self._strip: np.ndarray | None = None
        self._mp4 = VideoWriter(path, fps) if video_format == "mp4" else None

    def add(self, rgb: np.ndarray) -> None:
        """Append one overlay ``[H, W, 3]`` uint8."""
        index, self.frames = self.frames, self.frames + 1
        if self._mp4 is not None:
            self._mp4.write(self._with_legend(rgb))
            return
        if index % self.stride:
            return
        if rgb.shape[1] > GIF_WIDTH:
            size = (GIF_WIDTH, max(1, round(rgb.shape[0] * GIF_WIDTH / rgb.shape[1])))
            rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))
        self._kept.append(Image.fromarray(self._with_legend(rgb)).quantize(256))
        if len(self._kept) >= GIF_FRAMES:
            self._kept, self.stride = self._kept[::2], self.stride * 2

    def _with_legend(self, rgb: np.ndarray) -> np.ndarray:
        if self._strip is None or self._strip.shape[1] != rgb.shape[1]:
            self._strip = legend(self.tasks, rgb.shape[1])
        return np.concatenate([rgb, self._strip])

    def close(self) -> None:
        """Finish the file (it appears at ``path`` only now)."""
        if self._mp4 is not None:
            self._mp4.close()
        elif self._kept:
            first, *rest = self._kept
            with atomic_path(self.path, overwrite=False, suffix=".gif") as tmp:
                first.save(tmp, format="GIF", save_all=True, append_images=rest, duration=1000 * self.stride / self.fps,
                           loop=0)  # fmt: skip
        logger.info("overlay video of %d frames%s: %s", self.frames,
                    f" (one in {self.stride} in the GIF)" if self.stride > 1 else "", self.path)  # fmt: skip

    def abort(self) -> None:
        """Drop the unfinished video."""
        if self._mp4 is not None:
            self._mp4.abort()
        self._kept.clear()


class InferenceWriter:
    """Attach to an evaluator whose step output holds a ``pred`` ``[T,S,S]`` of probabilities per frame.

    With ``steady_seconds`` (steady video), each frame's probabilities are first averaged with its neighbours' in the
    study (:class:`~vfss_agglo_bundle.kinematics.steadying.TemporalSmoother`, a centred window of about
    ``steady_seconds`` at the study's frame rate, 3 frames when it is unknown): a frame is written ``radius`` frames
    late, at most ``2 * radius + 1`` frames of a study are held, and frames of a study must come in order, studies
    one after another (as ``inference_items`` lists them). Masks are the probabilities above 0.5.

    For each frame (named ``<study>/<frame:04d>``) writes, under ``output_dir``:
    ``masks/<study>/<frame>.nii.gz`` (the bundle's label format, at the frame's original size),
    optionally ``masks_png/<study>/<frame>_<task>.png``, and (``overlays``) ``overlays/<study>/<frame>.png``; when a
    study's last frame is written (with ``overlays``) its ``videos/<study>.gif`` (or ``.mp4``) of the overlays
    (:class:`OverlayVideo`) and, with ``kinematics``, ``kinematics/<study>.csv``, ``.json`` and ``.png``
    (:mod:`vfss_agglo_bundle.kinematics`, measured on the masks at the frame's own size; the frame rate is the
    batch's ``fps`` entry, NaN when unknown). Memory does not grow with a study's length: a frame's masks are
    written as they come and only its geometry (:class:`~vfss_agglo_bundle.kinematics.FrameGeometry`, a few points
    and areas) is kept. An ``output_dir`` that holds outputs already is refused before anything is written: use a
    new one. The NIfTI masks are written on one background thread while the next batch is segmented (gzip and file
    creation release the GIL; at most ``PENDING_WRITES`` wait); a failed write stops the run at the next iteration,
    and all writes are done before the end-of-run outputs (on a crash, the writes under way finish before Python
    exits: each is atomic, no half-written file is left; an unfinished video is dropped).

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
        self._video: OverlayVideo | None = None  # the study's overlay video while it is written
        self._geometries: dict[int, FrameGeometry] = {}  # the study's frames' geometry
        self._fps: float | None = None  # the study's frame rate
        self._pool: ThreadPoolExecutor | None = None
        self._writes: list[Future] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start_writer)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._steady_frames)
        engine.add_event_handler(Events.COMPLETED, self._finish_study)  # first: the last study, then the writes
        engine.add_event_handler(Events.COMPLETED, self._finish_writes)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._abort)

    def _start_writer(self, engine: Engine) -> None:
        earlier = [name for name in OUTPUT_FOLDERS if (self.output_dir / name).is_dir()]
        if earlier:
            raise FileExistsError(
                f"{self.output_dir} already holds the outputs of an earlier run ({', '.join(earlier)}); they are left "
                "as they are. Choose a new --output_dir, or delete them first."
            )
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mask-writer")

    def _check_writes(self, wait: bool) -> None:
        """Re-raise the first failed mask write (``wait``: after all of them are done; else after all but
        ``PENDING_WRITES``)."""
        pending = []
        for i, job in enumerate(self._writes):
            if wait or job.done() or i < len(self._writes) - PENDING_WRITES:
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

    def _abort(self, engine: Engine, error: Exception) -> None:
        if self._video is not None:
            self._video.abort()
            self._video = None
        raise error

    def _steady_frames(self, engine: Engine) -> None:
        """Push the batch's frames through their study's smoother and write the frames that come out."""
        self._check_writes(wait=False)
        for item, data in zip(engine.state.output, engine.state.batch, strict=True):
            study, frame = str(data["study"]), int(data["frame"])
            fps = float(data["fps"]) if "fps" in data else math.nan
            if study != self._study:
                self._finish_study(engine)
                self._study, self._smoother = study, TemporalSmoother(steady_radius(fps, self.steady_seconds))
                self._fps = None if math.isnan(fps) else fps
            keys = ("image_box", "image_shape", "image_frame", "image_path")
            self._held[frame] = {key: data[key] for key in keys if key in data}
            for index, probabilities in self._smoother.push(frame, item["pred"].detach().float().cpu().numpy()):
                self._write_frame(study, index, probabilities)

    def _finish_study(self, engine: Engine) -> None:
        """Write the study's last frames, then its overlay video and kinematics."""
        if self._study is None:
            return
        for index, probabilities in self._smoother.flush():
            self._write_frame(self._study, index, probabilities)
        if self._video is not None:
            self._video.close()
            self._video = None
        if self.kinematics:
            self._write_kinematics(self._study)
        self._study, self._geometries = None, {}

    def _write_frame(self, study: str, frame: int, probabilities: np.ndarray) -> None:
        """Write one frame from its model-space probabilities ``[T, S, S]``."""
        data = self._held.pop(frame)
        above = torch.from_numpy(probabilities > 0.5).to(torch.uint8)  # thresholded first: nearest resizing commutes
        masks = restore_masks(above, data["image_box"], data["image_shape"]).numpy()
        if self.min_region_area:
            masks = remove_small_regions(masks, self.tasks, self.min_region_area)
        name = f"{study}/{frame:04d}"
        self._writes.append(self._pool.submit(write_label, self.output_dir / "masks" / f"{name}.nii.gz", masks))
        if self.png_masks:
            for task, mask in zip(self.tasks, masks, strict=True):
                write_frame(self.output_dir / "masks_png" / f"{name}_{task}.png", mask * 255)
        if self.overlays:
            image = data["image_frame"].numpy() if "image_frame" in data else read_frame(data["image_path"])
            picture = overlay(image, masks)
            save_png(self.output_dir / "overlays" / f"{name}.png", picture, overwrite=False, compress_level=1)
            if self.video_format is not None:
                if self._video is None:
                    path = self.output_dir / "videos" / f"{study}.{self.video_format}"
                    fps = self.video_fps or self._fps or 10.0
                    self._video = OverlayVideo(path, self.tasks, fps, self.video_format)
                self._video.add(picture)
        if self.kinematics:
            self._geometries[frame] = frame_geometry(masks, self.tasks)

    def _write_kinematics(self, study: str) -> None:
        frames = sorted(self._geometries)
        result = analyse([self._geometries[f] for f in frames], self.tasks, self._fps, self.mm_per_px)
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
