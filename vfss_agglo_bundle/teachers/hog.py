"""HOG teacher: histograms of oriented gradients as dense targets, MaskFeat-style (Wei et al., CVPR 2022).

No weights: the targets are computed from the image. The canonical frame is resized to ``input_size`` (256, the
canonical default: a no-op there) and, at each cell size, every pixel votes its gradient magnitude into one of
``orientations`` unsigned orientation bins (0-180 degrees); each cell's histogram is the mean vote and is
L2-normalised on its own. Gradients, binning and normalisation follow ``skimage.feature.hog`` with
``cells_per_block=(1, 1)`` and ``block_norm="L2"``: central differences with zero gradient on the border rows and
columns, hard orientation bins, ``h / sqrt(sum(h**2) + eps**2)`` with eps 1e-5. Computed in float64, returned as
float32.

Output: dense ``[B, orientations * len(cells), input_size / cells[0], input_size / cells[0]]`` (``[B, 9, 32, 32]``
for 8-pixel cells at 256); coarser cell sizes are repeated (nearest) onto the finest grid. No summary.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from vfss_agglo_bundle.teachers.base import Teacher, TeacherOutput, resize_square

EPS = 1e-5

PRESETS: dict[str, dict[str, Any]] = {
    "full": dict(input_size=256, orientations=9, cells=[8]),
    "tiny": dict(input_size=64, orientations=9, cells=[8]),
}
TWO_SCALES = [8, 16]  # the `hog2` teacher


def hog_cells(image: Tensor, orientations: int = 9, cell: int = 8, eps: float = EPS) -> Tensor:
    """Per-cell L2-normalised orientation histograms of grey images.

    Args:
        image: ``[B, H, W]`` (any float dtype; computed in float64).
        orientations: unsigned orientation bins over 0-180 degrees.
        cell: cell side in pixels; the last ``H % cell`` rows and ``W % cell`` columns are not used.
        eps: normalisation constant.

    Returns:
        ``[B, orientations, H // cell, W // cell]`` float64.
    """
    x = image.double()
    g_row = torch.zeros_like(x)
    g_col = torch.zeros_like(x)
    g_row[:, 1:-1, :] = x[:, 2:, :] - x[:, :-2, :]
    g_col[:, :, 1:-1] = x[:, :, 2:] - x[:, :, :-2]
    magnitude = torch.hypot(g_col, g_row)
    orientation = torch.rad2deg(torch.atan2(g_row, g_col)) % 180.0
    bins = torch.div(orientation, 180.0 / orientations, rounding_mode="floor").long().clamp_(0, orientations - 1)
    votes = F.one_hot(bins, orientations).permute(0, 3, 1, 2) * magnitude[:, None]  # [B, O, H, W]
    histograms = F.avg_pool2d(votes, cell)  # mean vote per cell (skimage divides by the cell area)
    return histograms / torch.sqrt((histograms**2).sum(1, keepdim=True) + eps**2)


class HOGTeacher(Teacher):
    """Dense HOG targets (see the module docstring).

    Args:
        input_size: side the canonical image is resized to before the gradients are taken.
        orientations: orientation bins.
        cells: cell sizes in pixels, finest first.
        name: registry name (``hog``, or ``hog2`` for two cell sizes).
    """

    def __init__(
        self, input_size: int = 256, orientations: int = 9, cells: Sequence[int] = (8,), name: str = "hog"
    ) -> None:
        cells = [int(c) for c in cells]
        if not cells or sorted(cells) != cells or any(input_size % c for c in cells):
            raise ValueError(f"HOG cells {cells} must be increasing and divide input_size {input_size}.")
        super().__init__(
            name,
            {
                "arch": "hog",
                "input_size": int(input_size),
                "orientations": int(orientations),
                "cells": cells,
                "eps": EPS,
                "gradient": "central differences, zero on the border (skimage)",
                "normalisation": "L2 per cell",
            },
            f"resize {input_size}x{input_size} bilinear antialias; grey values in [0, 1] as they are",
        )
        self.input_size = int(input_size)
        self.orientations = int(orientations)
        self.cells = cells
        self.dense_dim = self.orientations * len(cells)
        self.grid = (self.input_size // cells[0],) * 2
        self.summary_dim = None
        self._freeze()

    def preprocess(self, image: Tensor) -> Tensor:
        """``[B, 1, H, W]`` -> ``[B, input_size, input_size]``."""
        return resize_square(image, self.input_size)[:, 0]

    def encode(self, x: Tensor) -> TeacherOutput:
        maps = []
        for cell in self.cells:
            h = hog_cells(x, self.orientations, cell)
            if tuple(h.shape[-2:]) != self.grid:
                h = h.repeat_interleave(cell // self.cells[0], -2).repeat_interleave(cell // self.cells[0], -1)
            maps.append(h)
        return TeacherOutput(summary=None, dense=torch.cat(maps, 1).float())


def build(weights: Path | None = None, preset: str = "full") -> HOGTeacher:
    """HOG teacher of a preset, one cell size (``weights`` must be ``None``: HOG has none)."""
    if weights is not None:
        raise ValueError(f"the hog teacher has no weights; got {weights}.")
    return HOGTeacher(**PRESETS[preset])


def build_two_scale(weights: Path | None = None, preset: str = "full") -> HOGTeacher:
    """HOG teacher with 8- and 16-pixel cells (registry name ``hog2``)."""
    if weights is not None:
        raise ValueError(f"the hog2 teacher has no weights; got {weights}.")
    return HOGTeacher(**{**PRESETS[preset], "cells": TWO_SCALES}, name="hog2")
