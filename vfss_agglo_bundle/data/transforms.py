"""The bundle's MONAI dictionary transforms: loading frames and labels, stored views, stored teacher features.

``LoadVFSSFramed`` is the one loader used everywhere (training, evaluation, teacher caching, inference): it
reads the PNG and the NIfTI with the conventions of :mod:`vfss_agglo_bundle.data.formats`, so image and label stay
aligned, and resizes both to ``[1, S, S]`` (float32 in [0, 1]) and ``[T, S, S]`` (float32 in {0, 1}).
``ApplyViewd`` gives the student the stored view of a frame that the teacher saw (:mod:`~vfss_agglo_bundle.data.views`)
and ``LoadTeacherFeaturesd`` adds that view's stored teacher features. Augmentations are plain MONAI transforms
wired in ``configs/common.yaml``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import MapTransform
from vfss_agglo_bundle.data.formats import read_frame, read_label
from vfss_agglo_bundle.data.views import apply_view, view_params


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
        num_tasks: expected label channels (after ``channels``); another count raises an error naming the file.
        channels: label channels to keep, in this order (a task subset of the datalist, see
            ``data.datalist.label_channels``); ``None`` keeps all.
        allow_missing_keys: skip keys absent from the data (inference has no label).
    """

    def __init__(
        self,
        keys: Sequence[Hashable] = ("image", "label"),
        image_size: int = 256,
        num_tasks: int | None = None,
        channels: Sequence[int] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_size = int(image_size)
        self.num_tasks = num_tasks
        self.channels = None if channels is None else [int(c) for c in channels]

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
        if self.channels is not None:
            if max(self.channels) >= label.shape[0]:
                raise ValueError(
                    f"label {path} has {label.shape[0]} channels; channel {max(self.channels)} was asked for."
                )
            label = label[self.channels]
        if self.num_tasks is not None and label.shape[0] != self.num_tasks:
            raise ValueError(
                f"label {path} has {label.shape[0]} channels but the config has {self.num_tasks} tasks; "
                "make `tasks` match the datalist's task list."
            )
        return resize_label(torch.from_numpy(label.astype(np.float32)), self.image_size)


class ApplyViewd(MapTransform):
    """Apply the stored view ``(d["frame_key"], d["view"])`` to ``[C, S, S]`` images under ``keys``.

    Distillation reads teacher targets from the feature store, so the student must see exactly the image the
    teacher saw: the store ran the teacher on ``apply_view(image, view_params(frame_key, view, **view_strength))``
    and this transform makes the same call.

    Args:
        keys: image keys.
        view_strength: ``view_params`` keyword arguments; must equal the store's (``reader.view_strength``).
    """

    def __init__(self, keys: Sequence[Hashable] = ("image",), view_strength: Mapping[str, Any] | None = None) -> None:
        super().__init__(keys)
        self.view_strength = dict(view_strength or {})

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        params = view_params(str(d["frame_key"]), int(d["view"]), **self.view_strength)
        for key in self.key_iterator(d):
            d[key] = apply_view(torch.as_tensor(d[key]), params)
        return d


class FeatureReader(Protocol):
    """What :class:`LoadTeacherFeaturesd` needs of a teacher feature store reader."""

    def read(self, key: str, view: int = 0) -> dict[str, torch.Tensor]:
        """``{"dense": [C, h, w], "summary": [D] (when the teacher has one)}`` of (frame ``key``, ``view``)."""


class LoadTeacherFeaturesd(MapTransform):
    """Add stored teacher features to a data dict: ``f"{name}_dense"`` ``[C, h, w]`` and, when the teacher has
    one, ``f"{name}_summary"`` ``[D]`` (float32), for every reader.

    Args:
        readers: teacher name -> reader of its store (``vfss_agglo_bundle.teachers.store.TeacherFeatureReader``).
        key_key: data key holding the frame key (``"s000/0000"``).
        view_key: data key holding the view index; a dict without it is read as view 0 (the identity).
        allow_missing_keys: pass through dicts that have no ``key_key``.
    """

    def __init__(
        self,
        readers: Mapping[str, FeatureReader],
        key_key: Hashable = "frame_key",
        view_key: Hashable = "view",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__([key_key], allow_missing_keys)
        self.readers = dict(readers)
        self.key_key = key_key
        self.view_key = view_key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        if self.key_key not in d:
            if self.allow_missing_keys:
                return d
            raise KeyError(
                f"LoadTeacherFeaturesd: the data has no {self.key_key!r} entry (keys: {sorted(map(str, d))}); "
                "add the frame key (vfss_agglo_bundle.data.datalist.frame_key) before this transform."
            )
        key, view = str(d[self.key_key]), int(d.get(self.view_key, 0))
        for name, reader in self.readers.items():
            features = reader.read(key, view)
            d[f"{name}_dense"] = features["dense"]
            if "summary" in features:
                d[f"{name}_summary"] = features["summary"]
        return d
