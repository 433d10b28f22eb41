"""The segmentation loss of multi-label sigmoid masks: soft Dice plus binary cross-entropy, per task channel.

MONAI's ``DiceCELoss(sigmoid=True)`` is not that for more than one channel: its cross-entropy term is
``torch.nn.CrossEntropyLoss``, a softmax across the channels, which treats the 12 overlapping structures as
mutually exclusive classes and gives a pixel that belongs to no structure (its target all zeros) no loss at all,
so it never penalises false positives on the background (0.7.0's default loss).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.losses import DiceLoss

__all__ = ["DiceBCELoss"]


class DiceBCELoss(nn.Module):
    """``lambda_dice * Dice(sigmoid) + lambda_bce * BCE-with-logits``, both per channel.

    ``forward(logits [B, T, H, W], target [B, T, H, W] in {0, 1})`` -> scalar. The Dice term is MONAI's ``DiceLoss``
    (one Dice per sample and channel, averaged; ``smooth_nr``/``smooth_dr`` as there, so an empty target with an
    empty prediction costs 0); the BCE term is the mean over every pixel and channel. Logits of another dtype (bf16
    under autocast) are computed in float32.
    """

    def __init__(
        self, lambda_dice: float = 0.5, lambda_bce: float = 0.5, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5
    ) -> None:
        super().__init__()
        if lambda_dice < 0 or lambda_bce < 0 or lambda_dice + lambda_bce == 0:
            raise ValueError(f"lambda_dice and lambda_bce must be >= 0 and not both 0, got {lambda_dice}, {lambda_bce}")
        self.lambda_dice = lambda_dice
        self.lambda_bce = lambda_bce
        self.dice = DiceLoss(sigmoid=True, smooth_nr=smooth_nr, smooth_dr=smooth_dr)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape != target.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} must have the same shape")
        logits = logits.float().contiguous()
        target = target.to(logits.dtype)
        bce = F.binary_cross_entropy_with_logits(logits, target)
        return self.lambda_dice * self.dice(logits, target) + self.lambda_bce * bce
