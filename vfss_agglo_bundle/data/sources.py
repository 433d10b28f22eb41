"""What the `inferring` run reads (frames from a folder, one sub-folder per study or flat, or a video file decoded
a frame at a time), the unlabelled frames stage 1 may distil on (`unlabelled_dir`: videos and frame folders), and a
video's frames written out as PNGs (:func:`import_video_frames`)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from monai.data import Dataset
from monai.transforms import apply_transform
from PIL import Image
from tqdm import tqdm
from vfss_agglo_bundle.data.formats import IMAGE_EXTENSIONS, write_frame
from vfss_agglo_bundle.data.video import VIDEO_EXTENSIONS, SequentialVideo, VideoInfo, probe_video, read_video
from vfss_agglo_bundle.utils.io import DataFormatError, PathLike, natural_key

logger = logging.getLogger(__name__)


def inference_items(source: PathLike, fps: float | None = None) -> tuple[list[dict], VideoInfo | None]:
    """List the frames to segment as ``{"image": path, "study": str, "frame": int, "fps": float}`` items, or for a
    video ``{"study", "frame", "fps"}`` items (:class:`InferenceDataset` decodes the frames as they are read) and
    the video's probe (``None`` for a folder).

    Args:
        source: a folder of grey frames (flat, or one sub-folder per study), or a video file (probed once here:
            frames counted, their times read, a variable frame rate resampled, see :mod:`~.video`; nothing kept).
        fps: frames per second of the studies; a video's own timing is used when this is ``None``. With neither,
            ``fps`` is NaN, a warning says so and the kinematics give times in frames.
    """
    source = Path(source)
    is_video = source.is_file() and source.suffix.lower() in VIDEO_EXTENSIONS
    if not (is_video or source.is_dir()):
        raise FileNotFoundError(
            f"inference input {source} is neither a folder of frames nor a video file ({', '.join(VIDEO_EXTENSIONS)})."
        )
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be > 0 frames per second, got {fps}.")
    if is_video:
        info = probe_video(source, fps)
        logger.info("inference: %s: %d frames of %dx%d at %s frames/s%s", source.name, info.frames, info.width,
                    info.height, f"{info.fps:.4g}" if info.fps else "an unknown rate",
                    " (given)" if fps is not None else "")  # fmt: skip
        fps = info.fps
    if fps is None:
        logger.warning(
            "inference: no frame rate for %s (a frame folder, or a video without one in its metadata): kinematics "
            "times will be in frames, not seconds. Pass the rate, e.g. `--fps 30`.",
            source,
        )
    rate = math.nan if fps is None else float(fps)
    if is_video:
        return [{"study": source.stem, "frame": i, "fps": rate} for i in range(info.frames)], info
    studies = sorted(d for d in source.iterdir() if d.is_dir()) or [source]
    items = []
    for study_dir in studies:
        paths = sorted((p for p in study_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS),
                       key=lambda p: natural_key(p.name))  # fmt: skip
        items += [{"image": str(p), "study": study_dir.name, "frame": i, "fps": rate} for i, p in enumerate(paths)]
    if not items:
        raise FileNotFoundError(f"no frames ({', '.join(IMAGE_EXTENSIONS)}) under {source}.")
    logger.info("inference: %d frames of %d studies from %s", len(items), len(studies), source)
    return items, None


class InferenceDataset(Dataset):
    """The frames :func:`inference_items` lists, with ``transform`` applied; a video's frames are decoded one at a time
    as they are read (in order, as the ``inferring`` run's loader reads them: each decoded once, none kept).

    Args:
        source: a folder of grey frames or a video file.
        transform: applied to each ``{"image": path or uint8 [H, W], "study", "frame", "fps"}`` item.
        fps: frames per second (``None``: a video's own).
    """

    def __init__(self, source: PathLike, transform: Callable | None = None, fps: float | None = None) -> None:
        items, info = inference_items(source, fps)
        super().__init__(items, transform)
        self.video = SequentialVideo(info.path, info) if info is not None else None

    def _transform(self, index: int) -> dict:
        item = self.data[index]
        if self.video is not None:
            item = {**item, "image": self.video[item["frame"]]}
        return apply_transform(self.transform, item) if self.transform is not None else item


def import_video_frames(
    video: PathLike, out_dir: PathLike, study: str | None = None, every: int = 1, image_size: int | None = None
) -> list[Path]:
    """Write every ``every``-th frame of a video as grey PNG ``out_dir/images/<study>/<frame>.png``.

    Frames are encoded on two threads while the next ones decode (PIL's PNG encoder releases the GIL)."""
    video = Path(video)
    study = study or video.stem
    written = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        pending = []
        for index, frame in enumerate(tqdm(read_video(video), desc=f"frames of {video.name}", unit="frame")):
            if index % every:
                continue
            if image_size is not None:
                frame = np.asarray(Image.fromarray(frame).resize((image_size, image_size), Image.BILINEAR))
            path = Path(out_dir) / "images" / study / f"{len(written):04d}.png"
            # frames of a video are written once and read once: fast compression
            pending.append(pool.submit(write_frame, path, frame, compress_level=1))
            written.append(path)
        for job in pending:
            job.result()  # re-raise a failed write here
    if not written:
        raise DataFormatError(f"video {video} has no frames.")
    return written


UNLABELLED_PREFIX = "unlabelled-"


def unlabelled_items(source: PathLike | None, frames_dir: PathLike) -> list[dict]:
    """Frames without labels for distillation only: ``{"image", "study": "unlabelled-<name>", "frame"}`` items.

    Args:
        source: a folder holding video files and/or frame folders (each sub-folder of frames is one study; frames
            directly in ``source`` are one study named after it); ``None`` or ``""``: none (returns ``[]``).
        frames_dir: where the frames of the videos are extracted (``<frames_dir>/images/<video stem>/``, once: a
            later run reuses them).

    Raises:
        FileNotFoundError: ``source`` is not a folder, or holds no video and no frame.
    """
    if not source:
        return []
    source = Path(source)
    if not source.is_dir():
        raise FileNotFoundError(f"unlabelled_dir {source} is not a folder (of VFSS videos or frame folders).")
    studies: dict[str, list[Path]] = {}
    for video in sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS):
        extracted = Path(frames_dir) / "images" / video.stem
        if not extracted.is_dir():
            import_video_frames(video, frames_dir, study=video.stem)
        studies[video.stem] = sorted(extracted.glob("*.png"), key=lambda p: natural_key(p.name))
    for folder in [source, *sorted(d for d in source.iterdir() if d.is_dir())]:
        frames = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
        if frames:
            studies[folder.name] = sorted(frames, key=lambda p: natural_key(p.name))
    items = [{"image": str(p), "study": f"{UNLABELLED_PREFIX}{study}", "frame": i}
             for study, frames in studies.items() for i, p in enumerate(frames)]  # fmt: skip
    if not items:
        raise FileNotFoundError(
            f"unlabelled_dir {source} holds no video ({', '.join(VIDEO_EXTENSIONS)}) and no frame "
            f"({', '.join(IMAGE_EXTENSIONS)})."
        )
    logger.info("unlabelled: %d frames of %d studies from %s (stage 1 only)", len(items), len(studies), source)
    return items
