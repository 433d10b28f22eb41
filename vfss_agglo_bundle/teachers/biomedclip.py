"""BiomedCLIP teacher: the open_clip ViT-B/16 vision tower of BiomedCLIP, built from a local folder.

The folder is an open_clip ``local-dir`` folder: ``open_clip_config.json`` (``model_cfg`` and
``preprocess_cfg``) and ``open_clip_pytorch_model.bin`` (or ``open_clip_model.safetensors``). Only the vision
tower is built: an ``open_clip.timm_model.TimmModel`` (timm trunk + projection head) from
``model_cfg["vision_cfg"]``, loaded strictly from the ``visual.*`` keys. The text tower is never built, which
avoids open_clip's offline trap (``HFTextEncoder`` always asks the hub for the PubMedBERT config).

Preprocessing follows open_clip's ``image_transform`` for a square frame: resize to ``vision_cfg.image_size``
(``preprocess_cfg.interpolation``, bicubic by default; antialiased, clamped to [0, 1]), grey repeated to 3
channels, normalised with ``preprocess_cfg`` mean/std (OpenAI CLIP values by default). Outputs: dense = patch
tokens of ``trunk.forward_features`` (after the final norm) ``[B, 768, 14, 14]``; summary = projected CLS
(equal to ``encode_image(normalize=False)``) ``[B, 512]``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.timm_model import TimmModel
from safetensors.torch import load_file
from torch import Tensor
from vfss_agglo_bundle.teachers.base import (
    TINY_SEED,
    Teacher,
    TeacherOutput,
    load_checked,
    read_checkpoint,
    resize_square,
    seeded,
)

CONFIG_FILE = "open_clip_config.json"
WEIGHT_FILES = ("open_clip_pytorch_model.bin", "open_clip_model.safetensors")
PRESETS: dict[str, dict[str, Any]] = {
    # model_cfg of microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224 (open_clip_config.json)
    "full": {
        "embed_dim": 512,
        "vision_cfg": {
            "timm_model_name": "vit_base_patch16_224",
            "timm_pool": "",
            "timm_proj": "linear",
            "image_size": 224,
        },
    },
    "tiny": {
        "embed_dim": 16,
        "vision_cfg": {"timm_model_name": "test_vit", "timm_pool": "", "timm_proj": "linear", "image_size": 160},
    },
}
VISION_KEYS = ("timm_model_name", "timm_pool", "timm_proj", "timm_proj_bias", "image_size")


def vision_tower(model_cfg: dict[str, Any]) -> TimmModel:
    """open_clip's timm vision tower as ``open_clip.model._build_vision_tower`` builds it (never pretrained)."""
    vision = model_cfg["vision_cfg"]
    if not vision.get("timm_model_name"):
        raise ValueError("only timm vision towers (vision_cfg.timm_model_name, as in BiomedCLIP) are supported.")
    return TimmModel(
        vision["timm_model_name"],
        embed_dim=model_cfg["embed_dim"],
        image_size=vision.get("image_size", 224),
        pool=vision.get("timm_pool", "avg"),
        proj=vision.get("timm_proj", "linear"),
        proj_bias=vision.get("timm_proj_bias", False),
        pretrained=False,
    )


class BiomedCLIPTeacher(Teacher):
    """open_clip timm vision tower teacher.

    Args:
        visual: an open_clip ``TimmModel`` with its weights loaded.
        model_cfg: open_clip ``model_cfg`` (only ``embed_dim`` and the vision keys are used).
        preprocess_cfg: open_clip ``preprocess_cfg`` (``mean``, ``std``, ``interpolation``; defaults: OpenAI CLIP).
    """

    def __init__(self, visual: TimmModel, model_cfg: dict[str, Any], preprocess_cfg: dict[str, Any]) -> None:
        vision = {key: model_cfg["vision_cfg"][key] for key in VISION_KEYS if key in model_cfg["vision_cfg"]}
        size = int(vision.get("image_size", 224))
        mean = [float(v) for v in preprocess_cfg.get("mean", OPENAI_DATASET_MEAN)]
        std = [float(v) for v in preprocess_cfg.get("std", OPENAI_DATASET_STD)]
        mode = preprocess_cfg.get("interpolation", "bicubic")
        if mode not in ("bicubic", "bilinear"):
            raise ValueError(f"preprocess_cfg.interpolation={mode!r} is not supported (use bicubic or bilinear).")
        super().__init__(
            "biomedclip",
            {
                "arch": "open_clip_timm_vision",
                "embed_dim": model_cfg["embed_dim"],
                **vision,
                "outputs": "dense=patch tokens of forward_features, summary=projected CLS",
            },
            f"resize {size}x{size} {mode} antialias, clamp [0,1]; grey->3ch; mean {mean} std {std}",
        )
        self.visual = visual
        self.size = size
        self.mode = mode
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        trunk = visual.trunk
        patch = trunk.patch_embed.patch_size
        self.dense_dim = trunk.num_features
        self.grid = (size // patch[0], size // patch[1])
        self.summary_dim = model_cfg["embed_dim"]
        self._freeze()

    def preprocess(self, image: Tensor) -> Tensor:
        """``[B, 1, H, W]`` -> normalised ``[B, 3, size, size]``."""
        x = resize_square(image, self.size, mode=self.mode).clamp(0.0, 1.0)
        return (x - self.mean) / self.std

    def encode(self, x: Tensor) -> TeacherOutput:
        trunk = self.visual.trunk
        tokens = trunk.forward_features(x)
        summary = self.visual.head(trunk.forward_head(tokens))
        patch = trunk.patch_embed.patch_size
        h, w = x.shape[-2] // patch[0], x.shape[-1] // patch[1]
        patches = tokens[:, trunk.num_prefix_tokens :]
        dense = patches.transpose(1, 2).reshape(x.shape[0], patches.shape[-1], h, w)
        return TeacherOutput(summary=summary, dense=dense)


def read_open_clip_folder(folder: Path) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """``(model_cfg, preprocess_cfg, weights file)`` of an open_clip ``local-dir`` folder."""
    config_path = folder / CONFIG_FILE
    try:
        config = json.loads(config_path.read_text())
        model_cfg = config["model_cfg"]
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise ValueError(f"{config_path} is not an open_clip config with a 'model_cfg' entry ({e}).") from e
    weights = next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"{folder} holds none of the weight files {list(WEIGHT_FILES)}.")
    return model_cfg, config.get("preprocess_cfg", {}), weights


def build(weights: Path | None, preset: str = "full") -> BiomedCLIPTeacher:
    """BiomedCLIP teacher from an open_clip folder, or with random weights (fixed seed) of the preset's architecture
    (a real folder brings its own architecture config)."""
    if weights is None:
        model_cfg = PRESETS[preset]
        with seeded(TINY_SEED):
            visual = vision_tower(model_cfg)
        return BiomedCLIPTeacher(visual, model_cfg, {})
    model_cfg, preprocess_cfg, path = read_open_clip_folder(Path(weights))
    state = load_file(path) if path.suffix == ".safetensors" else read_checkpoint(path)
    visual_state = {k[len("visual.") :]: v for k, v in state.items() if k.startswith("visual.")}
    visual = vision_tower(model_cfg)
    load_checked(visual, visual_state, path, "open_clip vision tower")
    return BiomedCLIPTeacher(visual, model_cfg, preprocess_cfg)
