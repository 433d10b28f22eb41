"""What the `inferring` run reads: frames from a folder (one sub-folder per study, or flat) or a video file."""

from __future__ import annotations

import logging
from pathlib import Path

from vfss_agglo_bundle.data.prepare import IMAGE_EXTENSIONS, import_video_frames
from vfss_agglo_bundle.utils.io import PathLike

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".mpg", ".mpeg", ".wmv", ".gif")


def inference_items(source: PathLike, output_dir: PathLike) -> list[dict]:
    """List the frames to segment as ``{"image": path, "study": str, "frame": int}``.

    Args:
        source: a folder of grey PNG frames (flat, or one sub-folder per study), or a video file (its frames are
            first extracted to ``<output_dir>/frames/<video stem>/``).
        output_dir: where the run writes its outputs.
    """
    source = Path(source)
    if source.is_file() and source.suffix.lower() in VIDEO_EXTENSIONS:
        frames_dir = Path(output_dir) / "frames"
        if not (frames_dir / "images" / source.stem).is_dir():
            import_video_frames(source, frames_dir, study=source.stem)
        source = frames_dir / "images"
    if not source.is_dir():
        raise FileNotFoundError(
            f"inference input {source} is neither a folder of frames nor a video file ({', '.join(VIDEO_EXTENSIONS)})."
        )
    studies = sorted(d for d in source.iterdir() if d.is_dir()) or [source]
    items = []
    for study_dir in studies:
        frames = sorted(p for p in study_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        items += [{"image": str(p), "study": study_dir.name, "frame": i} for i, p in enumerate(frames)]
    if not items:
        raise FileNotFoundError(f"no frames ({', '.join(IMAGE_EXTENSIONS)}) under {source}.")
    logger.info("inference: %d frames of %d studies from %s", len(items), len(studies), source)
    return items
