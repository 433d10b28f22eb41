"""Light FPN-style decoder: multi-scale encoder maps -> per-task logits at the input size."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ConvBNReLU", "LightDecoder"]


class ConvBNReLU(nn.Sequential):
    """3x3 conv (no bias) -> BatchNorm -> ReLU, same spatial size."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class LightDecoder(nn.Module):
    """Lateral 1x1 convs, top-down upsample-and-add, ``num_convs`` conv-BN-ReLU at the finest level, 1x1 head.

    Args:
        encoder_channels: channels of the encoder maps, finest first.
        num_classes: output channels (one sigmoid channel per task).
        width: channels of every decoder feature map.
        num_convs: conv-BN-ReLU blocks on the finest (stride-4) map.

    ``forward(maps, size)``: maps finest first ``[B, C_i, h_i, w_i]`` -> logits ``[B, num_classes, size[0], size[1]]``.
    """

    def __init__(self, encoder_channels: list[int], num_classes: int, width: int = 64, num_convs: int = 2) -> None:
        super().__init__()
        self.lateral = nn.ModuleList([nn.Conv2d(c, width, kernel_size=1) for c in encoder_channels])
        self.refine = nn.Sequential(*[ConvBNReLU(width, width) for _ in range(num_convs)])
        self.head = nn.Conv2d(width, num_classes, kernel_size=1)

    def forward(self, maps: list[torch.Tensor], size: list[int]) -> torch.Tensor:
        feats: list[torch.Tensor] = []
        for i, lateral in enumerate(self.lateral):
            feats.append(lateral(maps[i]))
        x = feats[-1]
        for i in range(len(feats) - 2, -1, -1):
            x = feats[i] + F.interpolate(x, size=feats[i].shape[-2:], mode="bilinear", align_corners=False)
        logits = self.head(self.refine(x))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
