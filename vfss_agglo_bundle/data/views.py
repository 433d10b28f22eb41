"""Deterministic augmented views of a frame, shared by the teacher feature store and the distillation data.

A view is identified by ``(frame key, view index)``. View 0 is the identity; a view >= 1 is a random affine
(rotation, isotropic scale, translation) drawn from a generator seeded with a sha256 of ``"{key}|{view}"``,
so every process, worker and run derives the same parameters. The store runs a teacher on
``apply_view(image, view_params(key, v))``; the distillation pipeline applies the same call to the student's
image, so the cached teacher features line up with what the student sees.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from vfss_agglo_bundle.data.datalist import frame_key, load_datalist, spaced_frames

__all__ = ["DEFAULT_VIEW_STRENGTH", "apply_view", "view_items", "view_params"]

DEFAULT_VIEW_STRENGTH: dict[str, float | tuple[float, float]] = {
    "rotation": 10.0,
    "scale": (0.9, 1.1),
    "translation": 0.06,
}


def view_params(
    key: str, view: int, rotation: float = 10.0, scale: Sequence[float] = (0.9, 1.1), translation: float = 0.06
) -> dict[str, float]:
    """Affine parameters of view ``view`` of frame ``key``.

    Args:
        key: the frame key (``"s000/0000"``).
        view: 0 for the identity, >= 1 for a random view.
        rotation: maximum rotation in degrees (uniform in +-rotation).
        scale: (min, max) isotropic zoom factor (uniform).
        translation: maximum shift as a fraction of the image side, per axis (uniform in +-translation).

    Returns:
        ``{"angle": degrees, "scale": factor, "tx": fraction, "ty": fraction}``.
    """
    if view < 0:
        raise ValueError(f"view must be >= 0, got {view}.")
    if view == 0:
        return {"angle": 0.0, "scale": 1.0, "tx": 0.0, "ty": 0.0}
    seed = int.from_bytes(hashlib.sha256(f"{key}|{view}".encode()).digest()[:8], "big")
    rng = random.Random(seed)
    return {
        "angle": rng.uniform(-rotation, rotation),
        "scale": rng.uniform(scale[0], scale[1]),
        "tx": rng.uniform(-translation, translation),
        "ty": rng.uniform(-translation, translation),
    }


def _is_identity(params: Mapping[str, float]) -> bool:
    return params["angle"] == 0.0 and params["scale"] == 1.0 and params["tx"] == 0.0 and params["ty"] == 0.0


def apply_view(image: Tensor, params: Mapping[str, float], mode: str = "bilinear") -> Tensor:
    """Warp a square ``[C, S, S]`` tensor by ``params`` (from :func:`view_params`); returns ``[C, S, S]``.

    The content is rotated by ``angle`` degrees about the centre (positive = clockwise as displayed, rows
    downwards), zoomed by ``scale`` (> 1 enlarges) and shifted by ``(tx, ty)`` image sides (+x = towards higher
    columns, +y = towards higher rows); uncovered pixels are 0. ``mode`` is ``"bilinear"`` for images and
    ``"nearest"`` for masks. The identity returns ``image`` itself, bit-exact.
    """
    if image.ndim != 3:
        raise ValueError(f"apply_view expects [C, S, S], got shape {tuple(image.shape)}.")
    if _is_identity(params):
        return image
    angle = math.radians(params["angle"])
    cos, sin, s = math.cos(angle), math.sin(angle), params["scale"]
    # affine_grid maps output to input coordinates (normalised to [-1, 1]), i.e. the inverse warp.
    inverse = torch.tensor([[cos, sin], [-sin, cos]], dtype=torch.float64) / s
    shift = torch.tensor([2.0 * params["tx"], 2.0 * params["ty"]], dtype=torch.float64)
    theta = torch.cat([inverse, -(inverse @ shift)[:, None]], dim=1)[None].to(image.device, torch.float32)
    x = image[None].float()
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)[0]
    return out.to(image.dtype)


def view_items(items: Sequence[Mapping], views: int, unlabelled: Sequence[Mapping] = ()) -> list[dict]:
    """The items of stage 1: each frame (``items``, then ``unlabelled``) once per view, with ``frame_key`` and
    ``view``; only ``image``, ``study`` and ``frame`` are kept (distillation reads no label)."""
    frames = [{k: item[k] for k in ("image", "study", "frame")} for item in [*items, *unlabelled]]
    return [{**item, "frame_key": frame_key(item), "view": v} for item in frames for v in range(views)]


def distill_items(
    datalist_file: str,
    tasks: Sequence[str],
    frames_per_study: int | None,
    views: int,
    unlabelled: Sequence[Mapping] = (),
) -> list[dict]:
    """Stage 1's items: ``frames_per_study`` evenly spaced frames of each training study
    (:func:`~vfss_agglo_bundle.data.datalist.spaced_frames`; ``None``: all), then ``unlabelled``, each once per view
    (:func:`view_items`): the frames the teacher store holds."""
    training = spaced_frames(load_datalist(datalist_file, "training", tasks), frames_per_study)
    return view_items(training, views, unlabelled)
