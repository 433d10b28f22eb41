"""Per-teacher adaptor heads on the student, used only during distillation (stage 1).

Layout (heads kept in ``nn.ModuleDict`` s keyed by teacher name, as in NVlabs RADIO)::

    image [B,1,S,S] -> StudentEncoder -> maps (strides 4..32) -> FeatureFusion -> [B,F,S/8,S/8]
        -> DenseAdaptor[t]   -> [B, dense_dim_t, h_t, w_t]    (one per teacher)
    deepest map -> global pool -> [B, summary_dim]
        -> SummaryAdaptor[t] -> [B, summary_dim_t]            (teachers that have a summary)

The fused map has stride 8 (32x32 at S=256). A ``DenseAdaptor`` runs its MLP on the coarser of the fused
grid and the teacher grid: it pools the fused map down first for coarse teachers (RAD-DINO 37x37 at S=512,
MedCLIP 7x7) and upsamples its output afterwards for fine ones (MedSAM/LiteMedSAM 64x64). Stride 8 and a
128-wide neck keep the heads at about 0.5 GFLOP a 256x256 frame, against 6 GFLOP for a stride-4, 256-wide
neck, which made distillation head-bound on CPU (the student itself is 0.23 GFLOP).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from vfss_agglo_bundle.networks.student import StudentEncoder
from vfss_agglo_bundle.utils.random import seeded

__all__ = [
    "DenseAdaptor",
    "DistillationModel",
    "DistillationOutput",
    "FeatureFusion",
    "HeadShape",
    "SummaryAdaptor",
    "resize_to_grid",
]


class HeadShape(NamedTuple):
    """What one teacher's adaptor heads predict, in plain numbers.

    dense_dim: channels of the teacher's dense map.
    grid: ``(h, w)`` of the dense map (as stored in the feature store).
    summary_dim: length of the teacher's summary vector, or None when it has none (no summary head).
    """

    dense_dim: int
    grid: tuple[int, int]
    summary_dim: int | None = None


class DistillationOutput(NamedTuple):
    """What :class:`DistillationModel` returns.

    predictions: teacher -> (summary prediction ``[B, D_t]`` or None, dense prediction ``[B, C_t, h_t, w_t]``).
    summary: the student's own summary ``[B, D]`` (global average pool of its deepest map).
    """

    predictions: dict[str, tuple[torch.Tensor | None, torch.Tensor]]
    summary: torch.Tensor


def resize_to_grid(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resample ``[B,C,h,w]`` to ``[B,C,grid[0],grid[1]]``: area pooling when shrinking both sides, else bilinear."""
    h, w = x.shape[-2:]
    if (h, w) == tuple(grid):
        return x
    if grid[0] <= h and grid[1] <= w:
        return F.adaptive_avg_pool2d(x, grid)
    return F.interpolate(x, size=grid, mode="bilinear", align_corners=False)


class FeatureFusion(nn.Module):
    """FPN-style neck: 1x1 project every level to ``dim``, resample to the second level (stride 8), sum,
    3x3 conv-LN-GELU.

    Input: maps finest first ``[B, C_i, S/r_i, S/r_i]`` (strides 4, 8, 16, 32); output ``[B, dim, S/8, S/8]``.
    """

    def __init__(self, in_channels: list[int], dim: int = 128) -> None:
        super().__init__()
        self.lateral = nn.ModuleList([nn.Conv2d(c, dim, kernel_size=1) for c in in_channels])
        self.out = nn.Sequential(nn.Conv2d(dim, dim, kernel_size=3, padding=1, bias=False), LayerNorm2d(dim), nn.GELU())

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        size = maps[1].shape[-2:]
        fused = self.lateral[1](maps[1]) + F.adaptive_avg_pool2d(self.lateral[0](maps[0]), size)
        for proj, feat in zip(self.lateral[2:], maps[2:], strict=True):
            fused = fused + F.interpolate(proj(feat), size=size, mode="bilinear", align_corners=False)
        return self.out(fused)


class DenseAdaptor(nn.Module):
    """A 2-layer MLP as 1x1 convs (conv-LN-GELU-conv) at the coarser of the input and teacher grids.

    ``[B, in_dim, h, w]`` -> ``[B, out_dim, grid[0], grid[1]]``: the input is pooled to the teacher grid first
    when that grid is smaller, the output is upsampled (bilinear) afterwards when it is larger.
    """

    def __init__(self, in_dim: int, out_dim: int, grid: tuple[int, int], hidden_dim: int) -> None:
        super().__init__()
        self.grid = (int(grid[0]), int(grid[1]))
        self.mlp = nn.Sequential(
            nn.Conv2d(in_dim, hidden_dim, kernel_size=1),
            LayerNorm2d(hidden_dim),
            nn.GELU(),
            nn.Conv2d(hidden_dim, out_dim, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if self.grid[0] <= h and self.grid[1] <= w:
            return self.mlp(resize_to_grid(x, self.grid))
        return resize_to_grid(self.mlp(x), self.grid)


class SummaryAdaptor(nn.Module):
    """Linear-LN-GELU-Linear on the student summary: ``[B, in_dim]`` -> ``[B, out_dim]``."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class DistillationModel(nn.Module):
    """Student encoder + fusion neck + per-teacher heads in one module (so DDP sees every parameter).

    Args:
        student: the encoder being distilled; ``self.student.state_dict()`` is what stage 1 saves.
        heads: teacher name -> ``(dense_dim, (h, w), summary_dim or None)``, the :class:`HeadShape` of what its
            heads predict (e.g. ``teachers.prepare.head_shapes(readers)``, read from the feature store). Empty: the
            model is just the student and ``forward`` returns ``{}`` (from-scratch baseline).
        hidden_dim: hidden width of every head; default ``max`` over the teachers' dense and summary dims.
        fusion_dim: width of the fused stride-8 map.
        init_seed: the neck and heads are drawn from the stream ``(init_seed, "adaptors")`` (``None``: torch's
            current generator).

    ``forward(x)`` returns a :class:`DistillationOutput`: each teacher's predictions and the student's own summary
    (which the attention balancer reads).
    """

    def __init__(
        self,
        student: StudentEncoder,
        heads: Mapping[str, HeadShape | tuple[int, tuple[int, int], int | None]],
        hidden_dim: int | None = None,
        fusion_dim: int = 128,
        init_seed: int | None = None,
    ) -> None:
        super().__init__()
        self.student = student
        self.heads = {name: HeadShape(int(d), (int(g[0]), int(g[1])), s) for name, (d, g, s) in heads.items()}
        self.fusion: FeatureFusion | None = None
        self.dense_heads = nn.ModuleDict()
        self.summary_heads = nn.ModuleDict()
        if not self.heads:
            return
        if hidden_dim is None:
            dims = [s.dense_dim for s in self.heads.values()]
            dims += [s.summary_dim for s in self.heads.values() if s.summary_dim is not None]
            hidden_dim = max(dims)
        with seeded(init_seed, "adaptors"):
            self.fusion = FeatureFusion(student.channels, fusion_dim)
            for name, spec in self.heads.items():
                self.dense_heads[name] = DenseAdaptor(fusion_dim, spec.dense_dim, spec.grid, hidden_dim)
                if spec.summary_dim is not None:
                    self.summary_heads[name] = SummaryAdaptor(student.summary_dim, spec.summary_dim, hidden_dim)

    def forward(self, x: torch.Tensor) -> DistillationOutput:
        """``x [B,1,S,S]`` -> predictions ``{teacher: (summary [B, D_t] or None, dense [B, C_t, h_t, w_t])}`` and the
        student summary ``[B, summary_dim]``."""
        maps = self.student(x)
        summary = self.student.summary(maps)
        if self.fusion is None:
            return DistillationOutput({}, summary)
        fused = self.fusion(maps)
        out: dict[str, tuple[torch.Tensor | None, torch.Tensor]] = {}
        for name, head in self.dense_heads.items():
            pred_summary = self.summary_heads[name](summary) if name in self.summary_heads else None
            out[name] = (pred_summary, head(fused))
        return DistillationOutput(out, summary)
