"""Video files as streams of grey frames (PyAV, FFmpeg's libraries): probed once, decoded one frame at a time, so
memory does not grow with a video's length; and overlay videos encoded frame by frame.

A video is read as its frames are shown:

- **Truncated or corrupt** files give the frames that decode; packets that fail to decode are skipped, and a file
  whose frames end well before the duration its header gives is reported (a warning, with both numbers). A file
  FFmpeg cannot open at all (empty, not a video, an MP4 whose index was cut off) gives one
  :class:`~vfss_agglo_bundle.utils.io.DataFormatError` naming it.
- **Variable frame rate** (frames not evenly spaced in time: screen recorders and capture cards drop or repeat
  frames): frames are resampled onto an even grid at the video's usual frame interval, each grid time showing the
  frame nearest to it (FFmpeg's ``-vsync cfr``), so that frame numbers times the frame rate are times again. The
  warning says how many frames were repeated and dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from vfss_agglo_bundle.utils.io import DataFormatError, PathLike, atomic_path

__all__ = [
    "VIDEO_EXTENSIONS",
    "SequentialVideo",
    "VideoInfo",
    "VideoWriter",
    "probe_video",
    "read_video",
    "write_video",
]

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".mpg", ".mpeg", ".wmv", ".gif")
VARIABLE_RATE_TOLERANCE = 0.25  # a frame interval this far (share of the usual one) from the usual one: variable
EARLY_END_FRAMES = 2  # frames ending this many frame intervals before the header's duration: truncated or corrupt


def _open(path: Path):
    import av

    if not path.is_file():
        raise FileNotFoundError(f"video {path} does not exist.")
    if path.stat().st_size == 0:
        raise DataFormatError(f"video {path} is empty (0 bytes); copy it again from its source.")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        raise DataFormatError(
            f"video {path} cannot be opened as a video ({e}); it may be truncated (an MP4 whose end is missing "
            "loses its index) or not a video. Copy it again, or re-encode what plays, e.g. "
            "`ffmpeg -i in.mp4 -c:v libx264 out.mp4`."
        ) from e
    if not container.streams.video:
        container.close()
        raise DataFormatError(f"video {path} has no video stream.")
    return container


class _Decoded:
    """Iterate a video's ``av.VideoFrame`` s in presentation order; packets that fail to decode are skipped and
    counted (``skipped``), a demuxer that loses the file's structure ends the frames."""

    def __init__(self, path: Path) -> None:
        self.path, self.skipped = path, 0

    def __iter__(self) -> Iterator:
        import av

        with _open(self.path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            packets = container.demux(stream)
            while True:
                try:
                    packet = next(packets)
                except StopIteration:
                    return
                except av.error.FFmpegError:
                    self.skipped += 1
                    return
                try:
                    yield from packet.decode()
                except av.error.FFmpegError:
                    self.skipped += 1


def _grey(frame, reformatter) -> np.ndarray:
    """uint8 ``[H, W]`` of a decoded frame (the luma plane of YUV video, BT.601 luminance of RGB and palette).

    ``reformatter`` (``av.video.reformatter.VideoReformatter``) is shared by a video's frames: it keeps its
    conversion context, which ``frame.to_ndarray(format="gray")`` would build anew for every frame (15x slower)."""
    return np.ascontiguousarray(reformatter.reformat(frame, format="gray").to_ndarray())


@dataclass(frozen=True)
class VideoInfo:
    """What one decoding pass found in a video.

    Attributes:
        path: the file.
        width, height: frame size in pixels.
        fps: frames per second of the frames as they are read (the even grid's rate); ``None`` when unknown.
        decoded: frames that decoded.
        shown: for each frame as read, the decoded frame it shows (``range(decoded)`` unless resampled).
        repeated, dropped: frames repeated and dropped by the resampling of a variable frame rate.
        skipped: packets that failed to decode.
        ended_early: the frames end at least ``EARLY_END_FRAMES`` intervals before the header's duration.
    """

    path: Path
    width: int
    height: int
    fps: float | None
    decoded: int
    shown: tuple[int, ...]
    repeated: int = 0
    dropped: int = 0
    skipped: int = 0
    ended_early: bool = False

    @property
    def frames(self) -> int:
        return len(self.shown)


def _even_grid(times: np.ndarray, nominal: float | None) -> tuple[float | None, tuple[int, ...] | None]:
    """The usual frame rate of presentation ``times`` (s), and for a variable rate the decoded frame nearest to each
    time of an even grid at that rate (``None`` when the frames are evenly spaced, or their times are not in order:
    AVI stores no presentation times, and with B-frames the decoder's guesses go back and forth; the frames are then
    taken as they come, at the header's rate)."""
    steps = np.diff(times)
    if steps.size == 0 or np.any(steps <= 0):
        return nominal, None
    step = float(np.median(steps))
    if nominal and abs(1.0 / nominal - step) <= 0.03 * step:  # containers round times (Matroska: to 1 ms)
        step = 1.0 / nominal  # the header's exact rate (29.97 rather than a rounded median)
    if np.all(np.abs(np.diff(times) - step) <= VARIABLE_RATE_TOLERANCE * step):
        return 1.0 / step, None
    grid = times[0] + step * np.arange(int(round((times[-1] - times[0]) / step)) + 1)
    after = np.clip(np.searchsorted(times, grid), 1, len(times) - 1)
    nearest = np.where(grid - times[after - 1] <= times[after] - grid, after - 1, after)
    return 1.0 / step, tuple(int(i) for i in nearest)


def probe_video(path: PathLike, fps: float | None = None) -> VideoInfo:
    """Decode a video once (pixels not converted, nothing kept) to count its frames and read their times.

    Args:
        path: the video file.
        fps: frames per second given by the user: frames are then read one after another at this rate, no
            resampling (the user's rate overrides the file's timing).

    Raises:
        DataFormatError: the file cannot be opened as a video, or no frame decodes.
    """
    path = Path(path)
    with _open(path) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        nominal = float(rate) if rate and 0 < float(rate) < 1000 else None
        duration = float(container.duration / 1e6) if container.duration else None
    times, size, decoded = [], (0, 0), _Decoded(path)
    for frame in decoded:
        times.append(frame.time if frame.time is not None else len(times) / (nominal or 1.0))
        size = (frame.width, frame.height)
    skipped = decoded.skipped
    if not times:
        raise DataFormatError(
            f"video {path} has no frame that decodes ({skipped} packet(s) failed); copy it again from its source."
        )
    times = np.asarray(times, np.float64)
    rate, shown = (fps, None) if fps is not None else _even_grid(times, nominal)
    interval = 1.0 / (rate or 1.0)
    # how long the decoded frames last: read as they come, one interval each; resampled, their own times
    end = len(times) * interval if rate and shown is None else times[-1] - times[0] + interval
    shown = shown or tuple(range(len(times)))
    counts = np.bincount(np.asarray(shown), minlength=len(times))
    ended_early = bool(duration and rate and duration - end >= EARLY_END_FRAMES / rate)
    info = VideoInfo(path=path, width=size[0], height=size[1], fps=rate, decoded=len(times), shown=shown,
                     repeated=int(np.clip(counts - 1, 0, None).sum()), dropped=int((counts == 0).sum()),
                     skipped=skipped, ended_early=ended_early)  # fmt: skip
    if info.repeated or info.dropped:
        logger.warning(
            "video %s has a variable frame rate: its %d frames are resampled to an even %.4g frames/s (%d repeated, "
            "%d dropped), so that times stay right within half a frame; pass --fps to read them as they are.",
            path, info.decoded, rate, info.repeated, info.dropped,
        )  # fmt: skip
    if skipped or ended_early:
        logger.warning(
            "video %s may be truncated or corrupt: %d frame(s) decoded (%.3g s), %d packet(s) failed%s; masks are "
            "written for the frames that decode.",
            path, info.decoded, end, skipped, f", and its header gives {duration:.3g} s" if ended_early else "",
        )  # fmt: skip
    return info


def read_video(path: PathLike, info: VideoInfo | None = None) -> Iterator[np.ndarray]:
    """Yield a video's frames as uint8 grey ``[H, W]``, one at a time (resampled as ``info`` says: a variable frame
    rate onto an even grid; ``None``: every decoded frame once)."""
    from av.video.reformatter import VideoReformatter

    path, reformatter = Path(path), VideoReformatter()
    shown = iter(info.shown) if info is not None else None
    wanted = next(shown, None) if shown is not None else None
    for index, frame in enumerate(_Decoded(path)):
        if shown is None:
            yield _grey(frame, reformatter)
            continue
        if wanted != index:
            continue  # dropped by the resampling
        image = _grey(frame, reformatter)
        while wanted == index:
            yield image
            wanted = next(shown, None)


class SequentialVideo:
    """A video's frames by index, decoded forward as they are asked for (frames read in order are each decoded once;
    going back reopens the file). ``video[i]`` is uint8 grey ``[H, W]``.

    Args:
        path: the video file.
        info: its probe: frames are then those of :func:`read_video` with ``info`` (resampled to an even rate),
            ``len`` is known; ``None``: every decoded frame once, as annotation tools number them.
    """

    def __init__(self, path: PathLike, info: VideoInfo | None = None) -> None:
        self.path, self.info = Path(path), info
        self._frames: Iterator[np.ndarray] | None = None
        self._next = 0

    def __len__(self) -> int:
        if self.info is None:
            raise TypeError(f"the length of video {self.path} is known once it is probed (probe_video).")
        return self.info.frames

    def __getitem__(self, index: int) -> np.ndarray:
        if index < 0 or (self.info is not None and index >= len(self)):
            raise IndexError(f"frame {index} of video {self.path} ({len(self)} frames)")
        if self._frames is None or index < self._next:
            self._frames, self._next = read_video(self.path, self.info), 0
        try:
            for _ in range(index - self._next):
                next(self._frames)
                self._next += 1
            image = next(self._frames)
        except StopIteration:
            self._frames = None
            raise DataFormatError(
                f"video {self.path} has {self._next} frames that decode; frame {index} was asked for"
                + (" (it gave more when it was probed: was it changed during the run?)" if self.info else ".")
            ) from None
        self._next = index + 1
        return image

    def __getstate__(self) -> dict:  # data loader workers open their own decoder
        return {"path": self.path, "info": self.info, "_frames": None, "_next": 0}


class VideoWriter:
    """Encode RGB frames ``[H, W, 3]`` uint8 into an H.264 MP4 as they come (yuv420p: odd edges are cropped);
    the file appears at ``path`` only when :meth:`close` succeeds (``abort``: never). ``options`` go to libx264
    (e.g. ``{"preset": "ultrafast"}``)."""

    def __init__(self, path: PathLike, fps: float, options: dict[str, str] | None = None) -> None:
        self.path, self.fps, self.options = Path(path), fps, options
        self._atomic = atomic_path(self.path, overwrite=False, suffix=".mp4")
        self._tmp = self._atomic.__enter__()
        self._container = None
        self._stream = None

    def write(self, rgb: np.ndarray) -> None:
        import av

        rgb = rgb[: rgb.shape[0] // 2 * 2, : rgb.shape[1] // 2 * 2]
        if self._container is None:
            self._container = av.open(str(self._tmp), "w", format="mp4")
            rate = Fraction(self.fps).limit_denominator(1001)
            self._stream = self._container.add_stream("libx264", rate=rate, options=self.options)
            self._stream.width, self._stream.height, self._stream.pix_fmt = rgb.shape[1], rgb.shape[0], "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        self._container.mux(self._stream.encode(frame))

    def close(self) -> None:
        """Finish the file and move it to ``path``."""
        try:
            if self._container is not None:
                self._container.mux(self._stream.encode())
                self._container.close()
        except BaseException as err:
            self._atomic.__exit__(type(err), err, err.__traceback__)
            raise
        self._atomic.__exit__(None, None, None)

    def abort(self) -> None:
        """Drop the unfinished file."""
        if self._container is not None:
            self._container.close()
        self._atomic.__exit__(RuntimeError, RuntimeError("aborted"), None)  # removes the temporary file


def write_video(
    path: PathLike, frames: Iterable[np.ndarray], fps: float, options: dict[str, str] | None = None
) -> Path:
    """Encode grey ``[H, W]`` or RGB ``[H, W, 3]`` uint8 frames, one at a time, as an H.264 MP4 at ``fps``."""
    writer = VideoWriter(path, fps, options)
    try:
        for frame in frames:
            writer.write(np.repeat(frame[..., None], 3, -1) if frame.ndim == 2 else frame)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return writer.path
