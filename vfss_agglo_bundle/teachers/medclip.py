"""MedCLIP teacher: MedCLIP's Swin-T vision tower and its 768->512 projection, rebuilt with transformers.

The ``medclip`` package pins transformers<=4.24 and downloads from the hub, so the tower is rebuilt here with
``transformers.SwinModel`` (its default config is ``microsoft/swin-tiny-patch4-window7-224``, the model
MedCLIP fine-tuned) and loaded from MedCLIP's ``pytorch_model.bin`` (``vision_model.model.*`` and
``vision_model.projection_head.weight``; ``relative_position_index`` buffers saved by old transformers are
dropped, the text tower is ignored).

Preprocessing follows ``MedCLIPFeatureExtractor``: the canonical frame is already square (no padding needed),
bicubic resize to 224 (antialiased, clamped to [0, 1]), normalised on one grey channel with MedCLIP's
``IMG_MEAN``/``IMG_STD`` and repeated to 3 channels. Outputs: dense = ``last_hidden_state`` as
``[B, 768, 7, 7]``; summary = ``projection_head(pooler_output)`` ``[B, 512]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.nn as nn
from torch import Tensor
from transformers import SwinConfig, SwinModel
from vfss_agglo_bundle.teachers.base import (
    TINY_SEED,
    Teacher,
    TeacherOutput,
    check_state_keys,
    load_checked,
    read_checkpoint,
    resize_square,
    seeded,
)

# medclip/constants.py
IMG_MEAN = 0.5862785803043838
IMG_STD = 0.27950088968644304

PRESETS: dict[str, dict[str, Any]] = {
    "full": dict(
        swin=dict(
            image_size=224, patch_size=4, embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7
        ),
        projection_dim=512,
    ),
    "tiny": dict(
        swin=dict(
            image_size=224, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 2], window_size=7
        ),
        projection_dim=8,
    ),
}
VISION_PREFIX = "vision_model.model."
PROJECTION_KEY = "vision_model.projection_head.weight"


class MedCLIPTeacher(Teacher):
    """Swin-T + linear projection teacher.

    Args:
        swin: a transformers ``SwinModel`` (with pooler) with its weights loaded.
        projection: ``Linear(swin.num_features, projection_dim, bias=False)`` with its weights loaded.
        config: the preset it was built with (see ``PRESETS``).
    """

    def __init__(self, swin: SwinModel, projection: nn.Linear, config: dict[str, Any]) -> None:
        size = config["swin"]["image_size"]
        super().__init__(
            "medclip",
            {"arch": "swin+linear", **config, "outputs": "dense=last_hidden_state, summary=proj(pooler_output)"},
            f"resize {size}x{size} bicubic antialias, clamp [0,1]; 1ch mean {IMG_MEAN} std {IMG_STD}; grey->3ch",
        )
        self.swin = swin
        self.projection = projection
        self.size = size
        self.dense_dim = swin.num_features
        side = size // (config["swin"]["patch_size"] * 2 ** (len(config["swin"]["depths"]) - 1))
        self.grid = (side, side)
        self.summary_dim = projection.out_features
        self._freeze()

    def preprocess(self, image: Tensor) -> Tensor:
        """``[B, 1, H, W]`` -> normalised ``[B, 3, 224, 224]``."""
        x = resize_square(image, self.size, mode="bicubic").clamp(0.0, 1.0)
        return ((x - IMG_MEAN) / IMG_STD).expand(-1, 3, -1, -1)

    def encode(self, x: Tensor) -> TeacherOutput:
        out = self.swin(pixel_values=x)
        tokens = out.last_hidden_state
        dense = tokens.transpose(1, 2).reshape(x.shape[0], tokens.shape[-1], *self.grid)
        return TeacherOutput(summary=self.projection(out.pooler_output), dense=dense)


def _build_tower(config: dict[str, Any]) -> tuple[SwinModel, nn.Linear]:
    swin = SwinModel(SwinConfig(**config["swin"]), add_pooling_layer=True)
    return swin, nn.Linear(swin.num_features, config["projection_dim"], bias=False)


def build(weights: Path | None, preset: str = "full") -> MedCLIPTeacher:
    """MedCLIP teacher from MedCLIP's ``pytorch_model.bin``, or with random weights (fixed seed) of the preset's
    architecture."""
    config = PRESETS[preset]
    if weights is None:
        with seeded(TINY_SEED):
            swin, projection = _build_tower(config)
        return MedCLIPTeacher(swin, projection, config)
    state = read_checkpoint(weights)
    swin_state = {
        k[len(VISION_PREFIX) :]: v
        for k, v in state.items()
        if k.startswith(VISION_PREFIX) and not k.endswith("relative_position_index")
    }
    check_state_keys([PROJECTION_KEY], [k for k in state if k == PROJECTION_KEY], weights, "MedCLIP projection")
    swin, projection = _build_tower(config)
    load_checked(swin, swin_state, weights, "MedCLIP Swin")
    load_checked(projection, {"weight": state[PROJECTION_KEY]}, weights, "MedCLIP projection")
    return MedCLIPTeacher(swin, projection, config)
