"""Pictures people look at: coloured mask overlays, contact sheets and legends (uint8 RGB arrays)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw
from vfss_agglo_bundle.utils.io import PathLike, atomic_path

# Twelve well-separated colours (tab20-like); more tasks cycle through the HSV wheel.
_PALETTE = np.array(
    [
        [230, 25, 75],
        [60, 180, 75],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
        [250, 190, 212],
        [0, 128, 128],
        [220, 190, 255],
        [170, 110, 40],
    ],
    dtype=np.uint8,
)


def task_colours(num_tasks: int) -> np.ndarray:
    """``[T, 3]`` uint8 RGB colours, one per task, stable for a given count."""
    if num_tasks <= len(_PALETTE):
        return _PALETTE[:num_tasks]
    import colorsys

    extra = [colorsys.hsv_to_rgb(i / num_tasks, 0.8, 0.95) for i in range(num_tasks - len(_PALETTE))]
    return np.concatenate([_PALETTE, (np.array(extra) * 255).astype(np.uint8)])


def overlay(
    image: np.ndarray, masks: np.ndarray, alpha: float = 0.45, outline: bool = True, colours: np.ndarray | None = None
) -> np.ndarray:
    """Blend multi-label masks onto a grey frame.

    Args:
        image: ``[H, W]`` uint8 or float in [0, 1].
        masks: ``[T, H, W]`` binary (overlapping allowed; later tasks are drawn on top).
        alpha: fill opacity.
        outline: draw each mask's boundary at full opacity.
        colours: ``[T, 3]`` uint8 colours (default :func:`task_colours`).

    Returns:
        ``[H, W, 3]`` uint8 RGB.
    """
    grey = np.asarray(image, dtype=np.float32)
    if grey.max() <= 1.0:
        grey = grey * 255.0
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    colours = (task_colours(len(masks)) if colours is None else np.asarray(colours)).astype(np.float32)
    for mask, colour in zip(np.asarray(masks) > 0.5, colours, strict=False):
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        if rows.size == 0:
            continue
        # only the mask's box (and a 1-pixel margin, so its edge is found as on the whole frame) is touched
        box = np.s_[max(rows[0] - 1, 0) : rows[-1] + 2, max(cols[0] - 1, 0) : cols[-1] + 2]
        inside, part = mask[box], rgb[box]
        part[inside] = (1 - alpha) * part[inside] + alpha * colour
        if outline:
            part[inside & ~_erode(inside)] = colour
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _erode(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return inner


def contact_sheet(tiles: Sequence[np.ndarray], titles: Sequence[str] | None = None, cols: int = 4) -> np.ndarray:
    """Arrange equally sized ``[H, W, 3]`` tiles in a grid with optional titles. Returns ``[H', W', 3]`` uint8."""
    if not tiles:
        raise ValueError("contact_sheet needs at least one tile.")
    h, w = tiles[0].shape[:2]
    cols = max(1, min(cols, len(tiles)))
    rows = -(-len(tiles) // cols)
    bar = 14 if titles else 0
    sheet = Image.new("RGB", (cols * w, rows * (h + bar)), (0, 0, 0))
    draw = ImageDraw.Draw(sheet)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        sheet.paste(Image.fromarray(tile), (c * w, r * (h + bar) + bar))
        if titles:
            draw.text((c * w + 3, r * (h + bar) + 1), titles[i], fill=(255, 255, 255))
    return np.asarray(sheet)


def legend(tasks: Sequence[str], width: int) -> np.ndarray:
    """A strip naming each task in its overlay colour. Returns ``[h, width, 3]`` uint8."""
    colours = task_colours(len(tasks))
    per_row = max(1, width // 90)
    rows = -(-len(tasks) // per_row)
    strip = Image.new("RGB", (width, rows * 16 + 4), (0, 0, 0))
    draw = ImageDraw.Draw(strip)
    for i, (name, colour) in enumerate(zip(tasks, colours, strict=True)):
        r, c = divmod(i, per_row)
        x, y = c * 90 + 4, r * 16 + 3
        draw.rectangle((x, y + 2, x + 10, y + 12), fill=tuple(int(v) for v in colour))
        draw.text((x + 14, y), name, fill=(255, 255, 255))
    return np.asarray(strip)


def save_png(
    path: PathLike, rgb: np.ndarray, overwrite: bool = False, keep_old: bool = False, compress_level: int = 6
) -> None:
    """Write an RGB (or grey) uint8 picture atomically (``overwrite`` and ``keep_old`` as in ``atomic_path``;
    ``compress_level`` 1: several times faster, somewhat larger, as lossless)."""
    with atomic_path(path, overwrite=overwrite, suffix=".png", keep_old=keep_old) as tmp:
        Image.fromarray(rgb).save(tmp, compress_level=compress_level)
