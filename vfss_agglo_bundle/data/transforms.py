"""MONAI dictionary transforms that load a VFSS frame and its label into the canonical tensors.

``LoadVFSSFramed`` is the one loader used everywhere (training, evaluation, teacher caching, inference): it
reads the PNG and the NIfTI with the conventions of :mod:`vfss_agglo_bundle.data.io`, so image and label stay
aligned, and resizes both to ``[1, S, S]`` (float32 in [0, 1]) and ``[T, S, S]`` (float32 in {0, 1}).
Augmentations are plain MONAI transforms wired in ``configs/common.yaml``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import MapTransform

from vfss_agglo_bundle.data.io import read_frame, read_label


def resize_image(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``[C, H, W]`` grey values to ``[C, size, size]`` (bilinear, antialiased when shrinking)."""
    if tuple(image.shape[-2:]) == (size, size):
        return image
    return F.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]


def resize_label(label: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``[T, H, W]`` binary masks to ``[T, size, size]`` (nearest)."""
    if tuple(label.shape[-2:]) == (size, size):
        return label
    return F.interpolate(label[None], size=(size, size), mode="nearest-exact")[0]


class LoadVFSSFramed(MapTransform):
    """Load ``image`` (grey PNG path) and ``label`` (NIfTI path) into canonical tensors.

    Adds ``<image key>_path`` (str) and ``<image key>_shape`` (original ``[H, W]``) for writers.

    Args:
        keys: the image key and, optionally, the label key (in that order).
        image_size: output side S.
        num_tasks: expected label channels; a label with another count raises an error naming the file.
        allow_missing_keys: skip keys absent from the data (inference has no label).
    """

    def __init__(
        self,
        keys: Sequence[Hashable] = ("image", "label"),
        image_size: int = 256,
        num_tasks: int | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_size = int(image_size)
        self.num_tasks = num_tasks

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for i, key in enumerate(self.keys):
            if key not in d:
                if self.allow_missing_keys:
                    continue
                raise KeyError(f"LoadVFSSFramed: key {key!r} is not in the data (keys: {sorted(map(str, d))}).")
            path = d[key]
            d[f"{key}_path"] = str(path)
            if i == 0:
                frame = read_frame(path)
                d[f"{key}_shape"] = torch.tensor(frame.shape)
                d[key] = resize_image(torch.from_numpy(frame).float().div_(255.0)[None], self.image_size)
            else:
                d[key] = self._load_label(path)
        return d

    def _load_label(self, path: str) -> torch.Tensor:
        label = read_label(path)
        if self.num_tasks is not None and label.shape[0] != self.num_tasks:
            raise ValueError(
                f"label {path} has {label.shape[0]} channels but the config has {self.num_tasks} tasks; "
                "make `tasks` match the datalist's task list."
            )
        return resize_label(torch.from_numpy(label.astype(np.float32)), self.image_size)
