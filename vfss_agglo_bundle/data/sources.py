"""What the `inferring` run reads (frames from a folder, one sub-folder per study or flat, or a video file decoded
into memory), the unlabelled frames stage 1 may distil on (`unlabelled_dir`: videos and frame folders), and a
video's frames written out as PNGs (:func:`import_video_frames`)."""

from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm
from vfss_agglo_bundle.data.formats import IMAGE_EXTENSIONS, read_video, video_fps, write_frame
from vfss_agglo_bundle.utils.io import DataFormatError, PathLike, natural_key

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".mpg", ".mpeg", ".wmv", ".gif")


def inference_items(source: PathLike, fps: float | None = None) -> list[dict]:
    """List the frames to segment as ``{"image": path or frame, "study": str, "frame": int, "fps": float}``.

    Args:
        source: a folder of grey PNG frames (flat, or one sub-folder per study; ``image`` is each frame's path), or
            a video file (decoded once into memory, ``image`` is each uint8 ``[H, W]`` frame: no PNG round trip;
            N x H x W bytes, e.g. 0.4 GB for 300 frames of 1512 x 920).
        fps: frames per second of the studies; a video's own metadata is used when this is ``None``. With
            neither, ``fps`` is NaN, a warning says so and the kinematics give times in frames.
    """
    source = Path(source)
    is_video = source.is_file() and source.suffix.lower() in VIDEO_EXTENSIONS
    if not (is_video or source.is_dir()):
        raise FileNotFoundError(
            f"inference input {source} is neither a folder of frames nor a video file ({', '.join(VIDEO_EXTENSIONS)})."
        )
    if is_video and fps is None:
        fps = video_fps(source)
        if fps is not None:
            logger.info("inference: %s plays at %.3g frames/s (its metadata)", source.name, fps)
    if fps is None:
        logger.warning(
            "inference: no frame rate for %s (a frame folder, or a video without one in its metadata): kinematics "
            "times will be in frames, not seconds. Pass the rate, e.g. `--fps 30`.",
            source,
        )
    elif not fps > 0:
        raise ValueError(f"fps must be > 0 frames per second, got {fps}.")
    rate = math.nan if fps is None else float(fps)
    if is_video:
        frames = list(tqdm(read_video(source), desc=f"decoding {source.name}", unit="frame"))
        if not frames:
            raise DataFormatError(f"video {source} has no frames.")
        logger.info("inference: %s: %d frames of %dx%d decoded into memory (%.2g GB)", source.name, len(frames),
                    *frames[0].shape, sum(f.nbytes for f in frames) / 1e9)  # fmt: skip
        return [{"image": f, "study": source.stem, "frame": i, "fps": rate} for i, f in enumerate(frames)]
    studies = sorted(d for d in source.iterdir() if d.is_dir()) or [source]
    items = []
    for study_dir in studies:
        paths = sorted((p for p in study_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS),
                       key=lambda p: natural_key(p.name))  # fmt: skip
        items += [{"image": str(p), "study": study_dir.name, "frame": i, "fps": rate} for i, p in enumerate(paths)]
    if not items:
        raise FileNotFoundError(f"no frames ({', '.join(IMAGE_EXTENSIONS)}) under {source}.")
    logger.info("inference: %d frames of %d studies from %s", len(items), len(studies), source)
    return items


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
