"""Per-teacher adaptor heads on the student, used only during distillation (stage 1).

Layout (heads kept in ``nn.ModuleDict`` s keyed by teacher name, as in NVlabs RADIO)::

    image [B,1,S,S] -> StudentEncoder -> maps (strides 4..32) -> FeatureFusion -> [B,F,S/4,S/4]
        -> DenseAdaptor[t]   -> [B, dense_dim_t, h_t, w_t]    (one per teacher)
    deepest map -> global pool -> [B, summary_dim]
        -> SummaryAdaptor[t] -> [B, summary_dim_t]            (teachers that have a summary)

The fused map has stride 4: at S=256 that is the 64x64 grid of MedSAM/LiteMedSAM, so SAM-like
teachers are matched without resampling. A ``DenseAdaptor`` first resamples the fused map to the
teacher grid (adaptive average pooling when the grid shrinks in both directions, bilinear otherwise)
and then applies its MLP, so the MLP runs on ``h_t x w_t`` tokens only (80x fewer for a 7x7 grid).
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import LayerNorm2d

from vfss_agglo_bundle.networks.student import StudentEncoder

__all__ = ["DenseAdaptor", "DistillationModel", "FeatureFusion", "SummaryAdaptor", "TeacherSpec", "resize_to_grid"]


class TeacherSpec(NamedTuple):
    """What the student must predict for one teacher.

    dense_dim: channels of the teacher's dense map.
    grid: ``(h, w)`` of the teacher's dense map (as stored in the feature store).
    summary_dim: length of the teacher's summary vector, or None when it has none.
    """

    dense_dim: int
    grid: tuple[int, int]
    summary_dim: int | None = None


def resize_to_grid(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resample ``[B,C,h,w]`` to ``[B,C,grid[0],grid[1]]``: area pooling when shrinking both sides, else bilinear."""
    h, w = x.shape[-2:]
    if (h, w) == tuple(grid):
        return x
    if grid[0] <= h and grid[1] <= w:
        return F.adaptive_avg_pool2d(x, grid)
    return F.interpolate(x, size=grid, mode="bilinear", align_corners=False)


class FeatureFusion(nn.Module):
    """FPN-style neck: 1x1 project every level to ``dim``, upsample to the finest level, sum, 3x3 conv-LN-GELU.

    Input: maps finest first ``[B, C_i, S/r_i, S/r_i]``; output ``[B, dim, S/r_0, S/r_0]``.
    """

    def __init__(self, in_channels: list[int], dim: int = 256) -> None:
        super().__init__()
        self.lateral = nn.ModuleList([nn.Conv2d(c, dim, kernel_size=1) for c in in_channels])
        self.out = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=3, padding=1, bias=False), LayerNorm2d(dim), nn.GELU()
        )

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        size = maps[0].shape[-2:]
        fused = self.lateral[0](maps[0])
        for proj, feat in zip(self.lateral[1:], maps[1:]):
            fused = fused + F.interpolate(proj(feat), size=size, mode="bilinear", align_corners=False)
        return self.out(fused)


class DenseAdaptor(nn.Module):
    """Resample to the teacher grid, then a 2-layer MLP as 1x1 convs (conv-LN-GELU-conv).

    ``[B, in_dim, h, w]`` -> ``[B, spec.dense_dim, grid[0], grid[1]]``.
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
        return self.mlp(resize_to_grid(x, self.grid))


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
        teachers: teacher name -> :class:`TeacherSpec`. Empty: the model is just the student and
            ``forward`` returns ``{}`` (from-scratch baseline).
        hidden_dim: hidden width of every head; default ``max`` over the teachers' dense and summary dims.
        fusion_dim: width of the fused stride-4 map.
    """

    def __init__(
        self,
        student: StudentEncoder,
        teachers: Mapping[str, TeacherSpec],
        hidden_dim: int | None = None,
        fusion_dim: int = 256,
    ) -> None:
        super().__init__()
        self.student = student
        self.teachers = {name: TeacherSpec(*spec) for name, spec in teachers.items()}
        self.fusion: FeatureFusion | None = None
        self.dense_heads = nn.ModuleDict()
        self.summary_heads = nn.ModuleDict()
        if not self.teachers:
            return
        if hidden_dim is None:
            dims = [s.dense_dim for s in self.teachers.values()]
            dims += [s.summary_dim for s in self.teachers.values() if s.summary_dim is not None]
            hidden_dim = max(dims)
        self.fusion = FeatureFusion(student.channels, fusion_dim)
        for name, spec in self.teachers.items():
            self.dense_heads[name] = DenseAdaptor(fusion_dim, spec.dense_dim, spec.grid, hidden_dim)
            if spec.summary_dim is not None:
                self.summary_heads[name] = SummaryAdaptor(student.summary_dim, spec.summary_dim, hidden_dim)

    def forward(self, x: torch.Tensor) -> dict[str, tuple[torch.Tensor | None, torch.Tensor]]:
        """``x [B,1,S,S]`` -> ``{teacher: (summary [B, summary_dim] or None, dense [B, dense_dim, h, w])}``."""
        if self.fusion is None:
            return {}
        maps = self.student(x)
        fused = self.fusion(maps)
        summary = self.student.summary(maps) if len(self.summary_heads) > 0 else None
        out: dict[str, tuple[torch.Tensor | None, torch.Tensor]] = {}
        for name, head in self.dense_heads.items():
            pred_summary = self.summary_heads[name](summary) if name in self.summary_heads else None
            out[name] = (pred_summary, head(fused))
        return out
