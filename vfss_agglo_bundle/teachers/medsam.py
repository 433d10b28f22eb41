"""MedSAM teacher: the SAM ViT-B image encoder fine-tuned by MedSAM (dense only, no summary token).

Preprocessing follows MedSAM's own inference/training code (not ``Sam.preprocess``): grey repeated to 3
channels, resized straight to ``img_size`` (no aspect keeping, no padding), per-image min-max to [0, 1], no
pixel mean/std. MedSAM used skimage's antialiased cubic resize; we use torch's antialiased bilinear resize.
Output: ``[B, out_chans, img_size/16, img_size/16]`` (``[B, 256, 64, 64]`` for the full model).

Weights: ``medsam_vit_b.pth`` from https://github.com/bowang-lab/MedSAM (a SAM-format state dict with
``image_encoder.*``, ``prompt_encoder.*`` and ``mask_decoder.*`` keys; may hold CUDA tensors, may be wrapped
in ``{"model": ...}`` with ``module.`` prefixes). Only ``image_encoder.*`` is used.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch.nn as nn
from segment_anything.modeling import ImageEncoderViT
from torch import Tensor
from vfss_agglo_bundle.teachers.base import (
    TINY_SEED,
    Teacher,
    TeacherOutput,
    load_checked,
    minmax_per_image,
    read_checkpoint,
    resize_square,
    seeded,
)

PRESETS: dict[str, dict[str, Any]] = {
    # segment_anything.build_sam.build_sam_vit_b
    "full": dict(
        img_size=1024,
        patch_size=16,
        embed_dim=768,
        depth=12,
        num_heads=12,
        mlp_ratio=4.0,
        window_size=14,
        global_attn_indexes=[2, 5, 8, 11],
        out_chans=256,
    ),
    "tiny": dict(
        img_size=256,
        patch_size=16,
        embed_dim=64,
        depth=2,
        num_heads=2,
        mlp_ratio=4.0,
        window_size=4,
        global_attn_indexes=[1],
        out_chans=32,
    ),
}


def sam_image_encoder(config: dict[str, Any]) -> ImageEncoderViT:
    """The SAM ``ImageEncoderViT`` exactly as ``segment_anything.build_sam`` builds it, with ``config``'s sizes."""
    return ImageEncoderViT(
        img_size=config["img_size"],
        patch_size=config["patch_size"],
        embed_dim=config["embed_dim"],
        depth=config["depth"],
        num_heads=config["num_heads"],
        mlp_ratio=config["mlp_ratio"],
        out_chans=config["out_chans"],
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=config["window_size"],
        global_attn_indexes=tuple(config["global_attn_indexes"]),
    )


class MedSAMTeacher(Teacher):
    """SAM ViT image encoder with MedSAM preprocessing.

    Args:
        encoder: a SAM ``ImageEncoderViT`` with its weights loaded.
        config: the encoder sizes it was built with (see ``PRESETS``).
    """

    def __init__(self, encoder: ImageEncoderViT, config: dict[str, Any]) -> None:
        size = config["img_size"]
        super().__init__(
            "medsam",
            {"arch": "sam_image_encoder_vit", **config, "outputs": "dense=neck map, no summary"},
            f"grey->3ch; resize {size}x{size} bilinear antialias; per-image min-max to [0,1]; no mean/std",
        )
        self.encoder = encoder
        self.img_size = size
        self.dense_dim = config["out_chans"]
        self.grid = (size // config["patch_size"],) * 2
        self.summary_dim = None
        self._freeze()

    def preprocess(self, image: Tensor) -> Tensor:
        """``[B, 1, H, W]`` -> ``[B, 3, img_size, img_size]`` in [0, 1] per image."""
        x = resize_square(image, self.img_size, mode="bilinear")
        return minmax_per_image(x).expand(-1, 3, -1, -1)

    def encode(self, x: Tensor) -> TeacherOutput:
        return TeacherOutput(summary=None, dense=self.encoder(x))


def load_sam_image_encoder(path: Path, config: dict[str, Any]) -> ImageEncoderViT:
    """Build an encoder with ``config`` and strictly load the ``image_encoder.*`` weights of a SAM checkpoint."""
    state = read_checkpoint(path)
    prefix = "image_encoder."
    encoder_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not encoder_state:
        raise ValueError(
            f"{path} has no 'image_encoder.*' keys (found e.g. {sorted(state)[:3]}); "
            "expected a SAM/MedSAM checkpoint such as medsam_vit_b.pth."
        )
    encoder = sam_image_encoder(config)
    load_checked(encoder, encoder_state, path, "SAM image encoder")
    return encoder


def build(weights: Path | None, preset: str = "full") -> MedSAMTeacher:
    """MedSAM teacher from a checkpoint file, or with random weights (fixed seed) of the preset's architecture."""
    config = PRESETS[preset]
    if weights is not None:
        return MedSAMTeacher(load_sam_image_encoder(weights, config), config)
    with seeded(TINY_SEED):
        encoder = sam_image_encoder(config)
    return MedSAMTeacher(encoder, config)
