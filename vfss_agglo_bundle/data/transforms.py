"""The bundle's MONAI dictionary transforms: loading frames and labels, stored views, stored teacher features.

``LoadVFSSFramed`` is the one loader used everywhere (training, evaluation, teacher caching, inference): it
reads the PNG and the NIfTI with the conventions of :mod:`vfss_agglo_bundle.data.formats`, so image and label stay
aligned, and brings both to ``[1, S, S]`` (float32 in [0, 1]) and ``[T, S, S]`` (float32 in {0, 1}): aspect-true
by default (optionally cropped to the exposed field, then padded to a square with black and resized; a 4:3 or 16:9
frame is not squashed), with the box that :func:`restore_masks` uses to put masks back on the original frame.
``ApplyViewd`` gives the student the stored view of a frame that the teacher saw (:mod:`~vfss_agglo_bundle.data.views`)
and ``LoadTeacherFeaturesd`` adds that view's stored teacher features. Augmentations are plain MONAI transforms
wired in ``configs/common.yaml``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import MapTransform
from vfss_agglo_bundle.data.formats import read_frame, read_label
from vfss_agglo_bundle.data.views import apply_view, view_params

if TYPE_CHECKING:  # the reader (and safetensors) load only where features are read, not for inference
    from vfss_agglo_bundle.data.feature_store import TeacherFeatureReader


def resize_image(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``[C, H, W]`` grey values to ``[C, size, size]`` (bilinear, antialiased when shrinking)."""
    if tuple(image.shape[-2:]) == (size, size):
        return image
    return F.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]


ASPECTS = ("letterbox", "stretch")
FIELD_THRESHOLD = 10 / 255  # a pixel darker than this is outside the exposed field (collimator, black border)
FIELD_FRACTION = 0.02  # a row or column is in the field when at least this share of its pixels is exposed


def exposed_field(frame: np.ndarray, threshold: float = FIELD_THRESHOLD) -> tuple[int, int, int, int]:
    """Bounding box ``(top, left, height, width)`` of the exposed field of a grey ``[H, W]`` frame in [0, 1]: the
    rows and columns with at least ``FIELD_FRACTION`` of their pixels brighter than ``threshold`` (the whole frame
    when none is)."""
    exposed = frame > threshold
    rows = np.flatnonzero(exposed.mean(1) >= FIELD_FRACTION)
    cols = np.flatnonzero(exposed.mean(0) >= FIELD_FRACTION)
    if len(rows) == 0 or len(cols) == 0:
        return 0, 0, frame.shape[0], frame.shape[1]
    return int(rows[0]), int(cols[0]), int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def frame_box(shape: Sequence[int], field: Sequence[int] | None = None, aspect: str = "letterbox") -> torch.Tensor:
    """Where a frame of ``shape`` ``(H, W)`` goes in the square model input: ``[top, left, height, width, pad_top,
    pad_left, side]``: the region of the frame kept (``field``, default all of it), and where that region sits in
    the ``side x side`` square it is padded to before resizing (``stretch``: no padding, ``side`` 0)."""
    top, left, height, width = field if field is not None else (0, 0, int(shape[0]), int(shape[1]))
    if aspect == "stretch":
        return torch.tensor([top, left, height, width, 0, 0, 0])
    side = max(height, width)
    return torch.tensor([top, left, height, width, (side - height) // 2, (side - width) // 2, side])


def to_model_input(tensor: torch.Tensor, box: torch.Tensor, size: int, label: bool = False) -> torch.Tensor:
    """``[C, H, W]`` -> ``[C, size, size]`` through ``box`` (:func:`frame_box`): crop, pad with 0, resize."""
    top, left, height, width, pad_top, pad_left, side = (int(v) for v in box)
    tensor = tensor[:, top : top + height, left : left + width]
    if side:
        square = tensor.new_zeros((tensor.shape[0], side, side))
        square[:, pad_top : pad_top + height, pad_left : pad_left + width] = tensor
        tensor = square
    return resize_label(tensor, size) if label else resize_image(tensor, size)


def restore_masks(pred: torch.Tensor, box: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Model-space masks ``[T, S, S]`` -> ``[T, H, W]`` on the original frame of ``shape`` (the inverse of
    :func:`to_model_input`; outside the kept field the masks are empty). uint8 masks stay uint8 (a quarter of the
    memory of float at the frame's size: 100 MB for 12 tasks at 4K), anything else becomes float."""
    top, left, height, width, pad_top, pad_left, side = (int(v) for v in box)
    size = (side, side) if side else (height, width)
    if tuple(pred.shape[-2:]) != size:
        pred = pred if pred.dtype == torch.uint8 else pred.float()
        pred = F.interpolate(pred[None], size=size, mode="nearest-exact")[0]
    if side:
        pred = pred[:, pad_top : pad_top + height, pad_left : pad_left + width]
    if tuple(pred.shape[-2:]) == (int(shape[0]), int(shape[1])):
        return pred
    out = pred.new_zeros((pred.shape[0], int(shape[0]), int(shape[1])))
    out[:, top : top + height, left : left + width] = pred
    return out


def resize_label(label: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``[T, H, W]`` binary masks to ``[T, size, size]`` (nearest)."""
    if tuple(label.shape[-2:]) == (size, size):
        return label
    return F.interpolate(label[None], size=(size, size), mode="nearest-exact")[0]


class LoadVFSSFramed(MapTransform):
    """Load ``image`` (grey PNG path, or a uint8 ``[H, W]`` frame already in memory) and ``label`` (NIfTI path)
    into canonical tensors.

    Adds ``<image key>_path`` (str; ``""`` for an in-memory frame, which is kept as ``<image key>_frame``),
    ``<image key>_shape`` (original ``[H, W]``) and ``<image key>_box`` (where the
    frame went in the model input, :func:`frame_box`) for writers; the label goes through the image's box.

    Args:
        keys: the image key and, optionally, the label key (in that order).
        image_size: output side S.
        aspect: ``letterbox`` (pad to a square with black, then resize: shapes keep their proportions) or
            ``stretch`` (resize each side on its own). Square frames are the same either way.
        crop_field: first crop to the exposed field (:func:`exposed_field`: drops black borders, circle corners
            and collimator shutters), found on each frame.
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
        aspect: str = "letterbox",
        crop_field: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if aspect not in ASPECTS:
            raise ValueError(f"aspect must be one of {ASPECTS}, got {aspect!r}.")
        self.image_size = int(image_size)
        self.aspect = aspect
        self.crop_field = bool(crop_field)
        self.num_tasks = num_tasks
        self.channels = None if channels is None else [int(c) for c in channels]

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        box = None
        for i, key in enumerate(self.keys):
            if key not in d:
                if self.allow_missing_keys:
                    continue
                raise KeyError(f"LoadVFSSFramed: key {key!r} is not in the data (keys: {sorted(map(str, d))}).")
            path = d[key]
            if i == 0:
                if isinstance(path, np.ndarray):  # a decoded video frame: kept for writers (overlays) as it is
                    if path.dtype != np.uint8 or path.ndim != 2:
                        raise ValueError(f"LoadVFSSFramed: an in-memory frame must be uint8 [H, W], got "
                                         f"{path.dtype} {list(path.shape)}.")  # fmt: skip
                    d[f"{key}_path"], d[f"{key}_frame"] = "", torch.from_numpy(path)
                    frame = d[f"{key}_frame"].float().div_(255.0)
                else:
                    d[f"{key}_path"] = str(path)
                    frame = torch.from_numpy(read_frame(path)).float().div_(255.0)
                field = exposed_field(frame.numpy()) if self.crop_field else None
                box = frame_box(frame.shape, field, self.aspect)
                d[f"{key}_shape"], d[f"{key}_box"] = torch.tensor(frame.shape), box
                d[key] = to_model_input(frame[None], box, self.image_size)
            else:
                d[f"{key}_path"] = str(path)
                d[key] = self._load_label(path, box)
        return d

    def _load_label(self, path: str, box: torch.Tensor | None) -> torch.Tensor:
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
        label = torch.from_numpy(label.astype(np.float32))
        if box is None:
            box = frame_box(label.shape[-2:], None, self.aspect)
        return to_model_input(label, box, self.image_size, label=True)


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


class LoadTeacherFeaturesd(MapTransform):
    """Add stored teacher features to a data dict: ``f"{name}_dense"`` ``[C, h, w]`` and, when the teacher has
    one, ``f"{name}_summary"`` ``[D]`` (float32), for every reader.

    Args:
        readers: teacher name -> reader of its store.
        key_key: data key holding the frame key (``"s000/0000"``).
        view_key: data key holding the view index; a dict without it is read as view 0 (the identity).
        allow_missing_keys: pass through dicts that have no ``key_key``.
    """

    def __init__(
        self,
        readers: Mapping[str, TeacherFeatureReader],
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


def remove_small_regions(
    masks: np.ndarray, tasks: Sequence[str], min_area: Mapping[str, float], connectivity: int = 2
) -> np.ndarray:
    """Binary masks ``[T, H, W]`` (channel ``t`` is ``tasks[t]``) with every connected region (8-connected by default)
    of a task in ``min_area`` smaller than that share of the frame's ``H * W`` pixels removed; other tasks are kept
    as they are. Returns a new uint8 array.

    A structure that is often absent (the bolus before and after the swallow) is otherwise "found" from a few stray
    pixels, which scores Dice 0 on a frame without it.
    """
    from scipy import ndimage

    out = np.array(masks, dtype=np.uint8, copy=True)
    structure = ndimage.generate_binary_structure(2, connectivity)
    for t, task in enumerate(tasks):
        if task not in min_area or not out[t].any():
            continue
        regions, count = ndimage.label(out[t], structure=structure)
        sizes = ndimage.sum_labels(out[t], regions, index=np.arange(1, count + 1))
        small = np.flatnonzero(sizes < min_area[task] * out[t].size) + 1
        out[t][np.isin(regions, small)] = 0
    return out


class RemoveSmallRegionsd(MapTransform):
    """:func:`remove_small_regions` on binary ``[T, H, W]`` predictions (tensor or array) under ``keys``.

    Args:
        keys: keys of the masks (``pred``).
        tasks: task of each channel.
        min_area: task -> smallest region kept, as a share of the frame's pixels (tasks not named, or not in
            ``tasks``, are left alone).
    """

    def __init__(
        self, keys: Sequence[Hashable] | Hashable, tasks: Sequence[str], min_area: Mapping[str, float]
    ) -> None:
        super().__init__(keys)
        self.tasks = list(tasks)
        self.min_area = {task: float(area) for task, area in min_area.items() if task in self.tasks}

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            pred = d[key]
            cleaned = remove_small_regions(np.asarray(pred.detach().cpu() if torch.is_tensor(pred) else pred) > 0.5,
                                           self.tasks, self.min_area)  # fmt: skip
            d[key] = (
                torch.as_tensor(cleaned, dtype=pred.dtype, device=pred.device) if torch.is_tensor(pred) else cleaned
            )
        return d
