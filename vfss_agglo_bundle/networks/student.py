"""Student encoder: a timm backbone (``features_only``) for one-channel VFSS frames.

Only pyramid levels with a reduction of at least 4 are kept (``MIN_REDUCTION``). MobileNetV4 and
ResNet have a stride-2 level; it is still computed (the deeper levels need it) but never returned,
so neither the adaptors nor the decoder hold a full-resolution-by-2 map in memory.

Stage 1 saves ``StudentEncoder.state_dict()`` (a flat dict of tensors, keys ``backbone.*``) and
stage 2 loads the same dict with :meth:`StudentEncoder.load_weights`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from vfss_agglo_bundle.utils.random import seeded
from vfss_agglo_bundle.utils.registry import check_name, lookup
from vfss_agglo_bundle.utils.state_dict import read_state_dict

__all__ = ["MIN_REDUCTION", "SUPPORTED_BACKBONES", "StudentEncoder", "check_backbone", "identify_backbone"]

logger = logging.getLogger(__name__)

MIN_REDUCTION = 4

# timm name -> indices of the feature levels to keep (those with reduction >= MIN_REDUCTION).
SUPPORTED_BACKBONES: dict[str, tuple[int, ...]] = {
    "efficientvit_b0": (0, 1, 2, 3),
    "efficientvit_b1": (0, 1, 2, 3),
    "mobilenetv4_conv_small": (1, 2, 3, 4),
    "repvit_m0_9": (0, 1, 2, 3),
    "tiny_vit_5m_224": (0, 1, 2, 3),
    "resnet18": (1, 2, 3, 4),
    "convnext_atto": (0, 1, 2, 3),
    "fastvit_t8": (0, 1, 2, 3),
}


def check_backbone(name: str) -> None:
    """Raise a ``ValueError`` listing the supported backbones when ``name`` is not one of them."""
    check_name(name, SUPPORTED_BACKBONES, "student backbone")


def _create_backbone(name: str) -> nn.Module:
    out_indices = lookup(name, SUPPORTED_BACKBONES, "student backbone")
    return timm.create_model(name, features_only=True, pretrained=False, in_chans=1, out_indices=out_indices)


def _shape_signature(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def identify_backbone(state: Mapping[str, torch.Tensor]) -> str | None:
    """Return the supported backbone whose encoder state dict has exactly these keys and shapes, else None.

    The candidates are built on the meta device, so this costs no memory and little time.
    """
    wanted = _shape_signature(state)
    for name in SUPPORTED_BACKBONES:
        with torch.device("meta"):
            candidate = StudentEncoder(name)
        if _shape_signature(candidate.state_dict()) == wanted:
            return name
    return None


class StudentEncoder(nn.Module):
    """Multi-scale timm encoder for ``[B, 1, S, S]`` images.

    Args:
        backbone: timm model name, one of ``SUPPORTED_BACKBONES``.
        weights: optional local file holding a flat ``StudentEncoder`` state dict (stage-1 output),
            loaded strictly.
        init_seed: the initial weights are drawn from the stream ``(init_seed, "student")``, whatever ran before
            (``None``: torch's current generator).

    Attributes:
        channels: channels of each returned map, finest first.
        reductions: stride of each returned map relative to the input (4, 8, 16, 32).
        summary_dim: length of the summary vector (channels of the deepest map).
    """

    def __init__(
        self, backbone: str = "efficientvit_b0", weights: str | os.PathLike | None = None, init_seed: int | None = None
    ) -> None:
        super().__init__()
        self.backbone_name = backbone
        with seeded(init_seed, "student"):
            self.backbone = _create_backbone(backbone)
        info = self.backbone.feature_info
        self.channels: list[int] = list(info.channels())
        self.reductions: list[int] = list(info.reduction())
        self.summary_dim: int = self.channels[-1]
        if min(self.reductions) < MIN_REDUCTION:
            raise RuntimeError(
                f"{backbone}: kept levels have reductions {self.reductions}, expected all >= {MIN_REDUCTION}"
            )
        if weights is not None:
            self.load_weights(weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``x [B, 1, S, S]`` -> maps ``[B, channels[i], S / reductions[i], S / reductions[i]]``, finest first."""
        return self.backbone(x)

    def summary(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """Global average pool of the deepest map: ``[B, summary_dim]``."""
        return F.adaptive_avg_pool2d(maps[-1], 1).flatten(1)

    def load_weights(self, path: str | os.PathLike) -> None:
        """Strictly load a flat encoder state dict from ``path`` (as written by stage 1).

        Raises:
            FileNotFoundError: the file does not exist.
            ValueError: the file is not a state dict of tensors, or it is for another architecture.
        """
        state = read_state_dict(path, "student encoder weights")
        if _shape_signature(state) != _shape_signature(self.state_dict()):
            found = identify_backbone(state)
            what = f"a {found!r} encoder" if found else "no supported student encoder"
            raise ValueError(
                f"{path} holds {what}, but this model uses {self.backbone_name!r}; set the student backbone to match "
                f"the file or point to weights saved from a {self.backbone_name!r} StudentEncoder"
            )
        self.load_state_dict(state, strict=True)
        logger.info("loaded %s student encoder weights from %s", self.backbone_name, path)
