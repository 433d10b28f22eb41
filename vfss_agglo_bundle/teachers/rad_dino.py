"""RAD-DINO teacher: the DINOv2 ViT-B/14 of ``microsoft/rad-dino`` from a local Hugging Face folder.

The folder holds ``config.json``, ``model.safetensors`` and ``preprocessor_config.json`` (a
``BitImageProcessor``). Preprocessing is read from that file: the canonical square frame is resized to the
processor's crop size (518; bicubic, antialiased, clamped to [0, 1]), so the processor's shortest-edge resize
plus centre crop becomes one square resize and no image edge is cropped away; grey is repeated to 3 channels
and normalised with the processor's ``image_mean``/``image_std`` (0.5307/0.2583 for RAD-DINO).
Outputs: dense = patch tokens of ``last_hidden_state`` as ``[B, 768, 37, 37]``; summary = CLS token
(``pooler_output``, after the final LayerNorm) ``[B, 768]``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import Dinov2Config, Dinov2Model
from vfss_agglo_bundle.teachers.base import TINY_SEED, Teacher, TeacherOutput, resize_square, seeded

# RAD-DINO's model card values; used only with random weights (a real folder brings its own).
RAD_DINO_MEAN = 0.5307
RAD_DINO_STD = 0.2583
PRESETS: dict[str, dict[str, Any]] = {
    # microsoft/rad-dino config.json: DINOv2 ViT-B/14 at 518 (the transformers defaults are ViT-B/14)
    "full": dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4, patch_size=14, image_size=518
    ),
    "tiny": dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=4, patch_size=14, image_size=112
    ),
}
ARCH_KEYS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "mlp_ratio",
    "patch_size",
    "num_channels",
    "qkv_bias",
    "hidden_act",
    "layer_norm_eps",
    "layerscale_value",
    "use_swiglu_ffn",
)
PIL_RESAMPLE_TO_TORCH = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def read_processor_config(path: Path, patch_size: int) -> dict[str, Any]:
    """Input side, resize mode and per-channel mean/std from a ``preprocessor_config.json``."""
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read the image processor config {path} ({e}).") from e
    size = config.get("crop_size") if config.get("do_center_crop", True) else config.get("size")
    if not isinstance(size, dict) or not ({"height", "shortest_edge"} & set(size)):
        raise ValueError(f"{path}: no usable crop_size/size entry (found {size!r}).")
    side = int(size.get("height", size.get("shortest_edge")))
    if size.get("width", side) != side or side % patch_size:
        raise ValueError(f"{path}: input size {size} must be square and a multiple of the patch size {patch_size}.")
    resample = int(config.get("resample", 3))
    if resample not in PIL_RESAMPLE_TO_TORCH:
        raise ValueError(f"{path}: resample={resample} is not supported (use 0, 2 or 3).")
    normalize = config.get("do_normalize", True)
    return {
        "size": side,
        "mode": PIL_RESAMPLE_TO_TORCH[resample],
        "mean": list(config["image_mean"]) if normalize else [0.0] * 3,
        "std": list(config["image_std"]) if normalize else [1.0] * 3,
    }


class RadDinoTeacher(Teacher):
    """DINOv2 teacher.

    Args:
        model: a transformers ``Dinov2Model`` with its weights loaded.
        processing: ``{"size", "mode", "mean", "std"}`` (see :func:`read_processor_config`).
    """

    def __init__(self, model: Dinov2Model, processing: dict[str, Any]) -> None:
        arch = {key: getattr(model.config, key) for key in ARCH_KEYS}
        super().__init__(
            "rad_dino",
            {"arch": "dinov2", **arch, "outputs": "dense=patch tokens, summary=CLS (pooler_output)"},
            f"resize {processing['size']}x{processing['size']} {processing['mode']} antialias, clamp [0,1]; "
            f"grey->3ch; mean {processing['mean']} std {processing['std']}",
        )
        self.model = model
        self.size = processing["size"]
        self.mode = processing["mode"]
        self.register_buffer("mean", torch.tensor(processing["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(processing["std"]).view(1, 3, 1, 1), persistent=False)
        self.dense_dim = model.config.hidden_size
        self.grid = (self.size // model.config.patch_size,) * 2
        self.summary_dim = model.config.hidden_size
        self._freeze()

    def preprocess(self, image: Tensor) -> Tensor:
        """``[B, 1, H, W]`` -> normalised ``[B, 3, size, size]``."""
        x = resize_square(image, self.size, mode=self.mode).clamp(0.0, 1.0)
        return (x - self.mean) / self.std

    def encode(self, x: Tensor) -> TeacherOutput:
        out = self.model(pixel_values=x)
        patch = self.model.config.patch_size
        h, w = x.shape[-2] // patch, x.shape[-1] // patch
        tokens = out.last_hidden_state[:, 1:]
        dense = tokens.transpose(1, 2).reshape(x.shape[0], tokens.shape[-1], h, w)
        return TeacherOutput(summary=out.pooler_output, dense=dense)


def build(weights: Path | None, preset: str = "full") -> RadDinoTeacher:
    """RAD-DINO teacher from a local HF folder, or with random weights (fixed seed) of the preset's architecture and
    RAD-DINO's model-card normalisation."""
    if weights is not None:
        model = Dinov2Model.from_pretrained(weights, local_files_only=True, dtype=torch.float32)
        processing = read_processor_config(Path(weights) / "preprocessor_config.json", model.config.patch_size)
        return RadDinoTeacher(model, processing)
    config = PRESETS[preset]
    with seeded(TINY_SEED):
        model = Dinov2Model(Dinov2Config(**config))
    size = config["image_size"]
    processing = {"size": size, "mode": "bicubic", "mean": [RAD_DINO_MEAN] * 3, "std": [RAD_DINO_STD] * 3}
    return RadDinoTeacher(model, processing)
