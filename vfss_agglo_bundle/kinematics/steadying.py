"""Steady video: a centred moving average over a study's ordered frames, streamed so that memory stays flat.

Per-frame predictions flicker; averaging each frame with its ``radius`` neighbours on each side before thresholding
at 0.5 steadies them: on probabilities it is a mean of probabilities, on binary masks a per-pixel majority vote.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator

import numpy as np

__all__ = ["STEADY_SECONDS", "TemporalSmoother", "steady_masks", "steady_radius"]

STEADY_SECONDS = 0.15  # window length: 30 frames/s -> 5 frames (radius 2), 7.67 frames/s -> 3 frames (radius 1)


def steady_radius(fps: float | None, seconds: float | None = STEADY_SECONDS) -> int:
    """Frames on each side of a centred window of about ``seconds``: ``round(seconds * fps / 2)``; 1 when ``fps`` is
    unknown (``None`` or NaN), 0 (no steadying) when ``seconds`` is 0 or ``None``."""
    if not seconds:
        return 0
    if fps is None or math.isnan(fps):
        return 1
    return round(seconds * fps / 2)


class TemporalSmoother:
    """Centred moving average of one study's frames, fed one frame at a time in increasing frame order.

    Each frame's output is the mean of the frames ``radius`` positions before it to ``radius`` after it (in arrival
    order), over the frames available at the study's ends. Outputs are delayed by ``radius`` frames; at most
    ``2 * radius + 1`` frames are held. ``flush`` ends the study and readies the smoother for the next one.

    Args:
        radius: frames on each side (0: each frame as it is).
    """

    def __init__(self, radius: int) -> None:
        if radius < 0:
            raise ValueError(f"radius must be >= 0 frames, got {radius}.")
        self.radius = radius
        self._frames: deque[tuple[int, np.ndarray]] = deque()
        self._centre = 0  # position in _frames of the next frame to give out
        self._last: int | None = None
        self._total: np.ndarray | None = None

    def __len__(self) -> int:
        """Frames held."""
        return len(self._frames)

    def push(self, frame_index: int, array: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Add frame ``frame_index`` (an array of any shape, e.g. ``[T, H, W]``); returns the ``(frame_index, mean)``
        (float32, same shape) of the frames whose window is now complete, oldest first.

        Raises:
            ValueError: ``frame_index`` is not after the previous frame's, or the shape is not the previous frame's.
        """
        array = np.asarray(array)
        if self._last is not None and frame_index <= self._last:
            raise ValueError(
                f"frames must arrive in increasing order: frame {frame_index} came after frame {self._last}."
            )
        if self._frames and array.shape != self._frames[-1][1].shape:
            raise ValueError(
                f"frame {frame_index} has shape {array.shape} but frame {self._frames[-1][0]} has "
                f"{self._frames[-1][1].shape}: frames of different sizes cannot be steadied (steady_seconds 0: off)."
            )
        self._last = frame_index
        self._frames.append((frame_index, array))
        out = []
        while self._centre + self.radius < len(self._frames):
            out.append(self._mean_at_centre())
        return out

    def flush(self) -> list[tuple[int, np.ndarray]]:
        """End the study: the ``(frame_index, mean)`` of the frames still held, their windows cut at the end."""
        out = []
        while self._centre < len(self._frames):
            out.append(self._mean_at_centre())
        self._frames.clear()
        self._centre, self._last = 0, None
        return out

    def _mean_at_centre(self) -> tuple[int, np.ndarray]:
        start = max(0, self._centre - self.radius)
        window = [self._frames[i][1] for i in range(start, min(len(self._frames), self._centre + self.radius + 1))]
        if self._total is None or self._total.shape != window[0].shape:
            self._total = np.empty(window[0].shape, np.float32)
        total = self._total  # summed in place in one reused buffer: only the mean handed out is a new array
        np.copyto(total, window[0])
        for array in window[1:]:
            total += array
        result = (self._frames[self._centre][0], total / np.float32(len(window)))
        self._centre += 1
        while self._centre > self.radius:  # the oldest frame is in no window still to come
            self._frames.popleft()
            self._centre -= 1
        return result


def steady_masks(masks: Iterable[np.ndarray], radius: int) -> Iterator[np.ndarray]:
    """One study's binary ``[T, H, W]`` masks, in frame order -> the same number of uint8 masks, each the per-pixel
    majority vote (mean > 0.5) of its window; streamed: at most ``2 * radius + 1`` frames are held."""
    smoother = TemporalSmoother(radius)
    for index, mask in enumerate(masks):
        for _, mean in smoother.push(index, mask):
            yield (mean > 0.5).astype(np.uint8)
    for _, mean in smoother.flush():
        yield (mean > 0.5).astype(np.uint8)
