"""The bundle's ``network_def``: student encoder + light decoder -> one logit channel per task."""

from __future__ import annotations

import os

import torch
import torch.nn as nn

from vfss_agglo_bundle.networks.decoder import LightDecoder
from vfss_agglo_bundle.networks.student import StudentEncoder
from vfss_agglo_bundle.tasks import DEFAULT_TASKS

__all__ = ["VFSSSegmenter"]


class VFSSSegmenter(nn.Module):
    """Multi-label VFSS segmenter: ``[B, 1, S, S]`` image in [0, 1] -> ``[B, num_classes, S, S]`` logits.

    Apply a sigmoid per channel (masks overlap). Any S divisible by 32 works (256 and 512 are tested);
    the model is TorchScript-scriptable and ONNX-exportable.

    Args:
        backbone: student backbone, one of ``networks.student.SUPPORTED_BACKBONES``.
        num_classes: number of tasks (channels of the output); default: the default task list.
        decoder_width: channels of the decoder maps.
        encoder_weights: optional flat stage-1 encoder state dict to start from (see :meth:`load_encoder`).
    """

    def __init__(
        self,
        backbone: str = "efficientvit_b0",
        num_classes: int = len(DEFAULT_TASKS),
        decoder_width: int = 64,
        encoder_weights: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        self.encoder = StudentEncoder(backbone)
        self.decoder = LightDecoder(self.encoder.channels, num_classes, width=decoder_width)
        if encoder_weights is not None:
            self.load_encoder(encoder_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, 1, S, S]`` -> logits ``[B, num_classes, S, S]``."""
        return self.decoder(self.encoder(x), [x.shape[-2], x.shape[-1]])

    def load_encoder(self, path: str | os.PathLike) -> None:
        """Load a stage-1 flat encoder state dict; ValueError naming the file and both architectures on mismatch."""
        self.encoder.load_weights(path)
