"""Progressive resizing: the first epochs of a training stage at a lower image size (as in fast.ai's and FFCV's
ImageNet schedules), the rest at the full size.

A step at 128 x 128 costs about a quarter of the network's forward and backward at 256 x 256, so more epochs fit in
the same time; the last epochs at full size adapt the network to the resolution it is validated and used at.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from monai.engines.utils import default_prepare_batch

__all__ = ["LowResEpochs", "downsample_pair"]


def downsample_pair(image: torch.Tensor, label: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``image`` [B, C, H, W] resized to [B, C, size, size] (bilinear, anti-aliased) and the binary ``label``
    [B, T, H, W] to [B, T, size, size]: a pixel is foreground where foreground covers at least half of its area."""
    if image.dim() != 4 or label.dim() != 4:
        raise ValueError(f"expected image and label [B, C, H, W], got {tuple(image.shape)} and {tuple(label.shape)}.")
    image = F.interpolate(image, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    label = (F.interpolate(label.float(), size=(size, size), mode="area") >= 0.5).to(label.dtype)
    return image, label


class LowResEpochs:
    """A ``prepare_batch`` for MONAI's ``SupervisedTrainer`` that hands the network ``size`` x ``size`` images and
    labels during the first ``epochs`` epochs and the loader's own size afterwards. Attach it to the trainer too
    (it is a handler): it follows the trainer's epoch, also when a run resumes.

    Args:
        size: the image side of the first epochs (pixels).
        epochs: how many epochs at ``size``; 0 trains every epoch at the full size.
    """

    def __init__(self, size: int = 128, epochs: int = 0) -> None:
        if size < 1:
            raise ValueError(f"low-resolution size must be a positive number of pixels, got {size}.")
        if epochs < 0:
            raise ValueError(f"low-resolution epochs must be >= 0, got {epochs}.")
        self.size = int(size)
        self.epochs = int(epochs)
        self._low = self.epochs > 0

    def attach(self, engine: Engine) -> None:
        """Follow ``engine``'s epoch (at each epoch's start)."""
        engine.add_event_handler(Events.EPOCH_STARTED, self._follow)

    def _follow(self, engine: Engine) -> None:
        self._low = engine.state.epoch <= self.epochs

    def __call__(
        self,
        batchdata: Mapping[str, torch.Tensor] | Sequence[torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image [B, 1, s, s], label [B, T, s, s])`` on ``device``; ``s`` is ``size`` in the first epochs."""
        image, label = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        if self._low and image.shape[-2:] != (self.size, self.size):
            if min(image.shape[-2:]) < self.size:
                raise ValueError(f"lowres_size {self.size} is above the image size {tuple(image.shape[-2:])}: the "
                                 "first epochs would be upsampled; set lowres_size below image_size.")  # fmt: skip
            image, label = downsample_pair(image, label, self.size)
        return image, label
