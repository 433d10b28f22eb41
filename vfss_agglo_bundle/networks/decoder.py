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
    """Lateral 1x1 convs, top-down upsample-and-add, ``num_convs`` conv-BN-ReLU at the finest level (stride 4), then a
    stride-2 stage that sharpens small structures with the image itself, and a 1x1 head.

    The stride-2 stage squeezes the stride-4 map to ``fine_width`` channels, upsamples it 2x, concatenates the
    image at half resolution and applies one conv-BN-ReLU: a hyoid of ~30 pixels at 256 x 256 spans about two cells
    of a stride-4 map, too coarse for its outline; the image's own edges at stride 2 cost a quarter of one stride-4
    conv.

    Args:
        encoder_channels: channels of the encoder maps, finest first.
        num_classes: output channels (one sigmoid channel per task).
        width: channels of every stride-4..32 decoder map.
        num_convs: conv-BN-ReLU blocks on the finest (stride-4) map.
        fine_width: channels of the stride-2 stage.

    ``forward(maps, image)``: maps finest first ``[B, C_i, h_i, w_i]``, the input ``image [B, 1, H, W]`` -> logits
    ``[B, num_classes, H, W]``.
    """

    def __init__(
        self, encoder_channels: list[int], num_classes: int, width: int = 64, num_convs: int = 2, fine_width: int = 16
    ) -> None:
        super().__init__()
        self.lateral = nn.ModuleList([nn.Conv2d(c, width, kernel_size=1) for c in encoder_channels])
        self.refine = nn.Sequential(*[ConvBNReLU(width, width) for _ in range(num_convs)])
        self.squeeze = nn.Conv2d(width, fine_width, kernel_size=1)
        self.fine = ConvBNReLU(fine_width + 1, fine_width)
        self.head = nn.Conv2d(fine_width, num_classes, kernel_size=1)

    def forward(self, maps: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        feats: list[torch.Tensor] = []
        for i, lateral in enumerate(self.lateral):
            feats.append(lateral(maps[i]))
        x = feats[-1]
        for i in range(len(feats) - 2, -1, -1):
            x = feats[i] + F.interpolate(x, size=feats[i].shape[-2:], mode="bilinear", align_corners=False)
        half = F.avg_pool2d(image, kernel_size=2)
        x = F.interpolate(self.squeeze(self.refine(x)), size=half.shape[-2:], mode="bilinear", align_corners=False)
        x = self.fine(torch.cat([x, half.to(x.dtype)], dim=1))
        return F.interpolate(self.head(x), size=image.shape[-2:], mode="bilinear", align_corners=False)
