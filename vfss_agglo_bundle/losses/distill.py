"""Distillation losses (dense and summary) and the per-teacher loss module.

Every loss function takes ``pred`` and ``target`` of the same shape, channels in dim 1 (``[B,C]`` or
``[B,C,h,w]``), compares them token by token (a token = one spatial position of one image) and
returns one value per sample, ``[B]``, averaged over that sample's tokens (the balancers weigh samples).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from vfss_agglo_bundle.losses.standardize import PHIStandardizer
from vfss_agglo_bundle.utils.registry import lookup

__all__ = ["LOSSES", "DistillationLoss", "cosine", "cosine_smooth_l1", "get_loss", "mse"]


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")


def _per_sample(values: torch.Tensor) -> torch.Tensor:
    """``[B, ...]`` -> ``[B]`` mean over everything but the batch."""
    return values.reshape(values.shape[0], -1).mean(1)


def cosine(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``[B]``: mean over a sample's tokens of ``1 - cos(pred, target)`` along dim 1 (the summary loss)."""
    _check_pair(pred, target)
    return _per_sample(1.0 - F.cosine_similarity(pred, target.to(pred.dtype), dim=1))


def cosine_smooth_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """AM-RADIO / Theia dense loss, ``[B]``: mean over a sample's tokens of ``0.9 (1 - cos) + 0.1 smoothL1``
    (smooth L1 averaged over channels, beta 1)."""
    _check_pair(pred, target)
    target = target.to(pred.dtype)
    cos = 1.0 - F.cosine_similarity(pred, target, dim=1)
    l1 = F.smooth_l1_loss(pred, target, reduction="none", beta=1.0).mean(dim=1)
    return _per_sample(0.9 * cos + 0.1 * l1)


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``[B]``: mean squared error over a sample's elements (RADIO v2.5 uses it on PHI-S standardised targets)."""
    _check_pair(pred, target)
    return _per_sample((pred - target.to(pred.dtype)) ** 2)


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "cosine": cosine,
    "cosine_smooth_l1": cosine_smooth_l1,
    "mse": mse,
}


def get_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Loss function by name from ``LOSSES``."""
    return lookup(name, LOSSES, "distillation loss")


class DistillationLoss(nn.Module):
    """Per-teacher distillation loss: ``dense_loss(pred, target) + summary_weight * summary_loss(pred, target)``.

    Args:
        teacher_names: teachers to score (every one must be in the outputs and targets).
        dense_loss: a name from ``LOSSES`` for all teachers, or a mapping teacher -> name.
        summary_loss: name from ``LOSSES`` for summary vectors.
        summary_weight: weight of the summary term (only for teachers whose prediction and target both have one).
        standardizers: optional teacher -> fitted :class:`PHIStandardizer`; that teacher's dense
            targets are standardised and its head predicts in PHI-S space.

    ``forward(outputs, targets)``: ``outputs[t] = (summary_pred [B,D] | None, dense_pred [B,C,h,w])`` as
    returned by ``DistillationModel``; ``targets[t] = (summary [B,D] | None, dense [B,C,h,w])`` (e.g. a
    ``TeacherOutput``). Returns ``{teacher: per-sample loss [B]}``.
    """

    def __init__(
        self,
        teacher_names: Sequence[str],
        dense_loss: str | Mapping[str, str] = "cosine_smooth_l1",
        summary_loss: str = "cosine",
        summary_weight: float = 1.0,
        standardizers: Mapping[str, PHIStandardizer] | None = None,
    ) -> None:
        super().__init__()
        self.teacher_names = list(teacher_names)
        names = dense_loss if isinstance(dense_loss, Mapping) else {t: dense_loss for t in self.teacher_names}
        missing = [t for t in self.teacher_names if t not in names]
        if missing:
            raise ValueError(f"dense_loss has no entry for teachers {missing}")
        self.dense_loss_names = {t: names[t] for t in self.teacher_names}
        self.dense_losses = {t: get_loss(n) for t, n in self.dense_loss_names.items()}
        self.summary_loss = get_loss(summary_loss)
        self.summary_weight = float(summary_weight)
        standardizers = dict(standardizers or {})
        unknown = sorted(set(standardizers) - set(self.teacher_names))
        if unknown:
            raise ValueError(f"standardizers given for unknown teachers {unknown}; teachers: {self.teacher_names}")
        self.standardizers = nn.ModuleDict(standardizers)

    def forward(
        self,
        outputs: Mapping[str, tuple[torch.Tensor | None, torch.Tensor]],
        targets: Mapping[str, tuple[torch.Tensor | None, torch.Tensor]],
    ) -> dict[str, torch.Tensor]:
        losses: dict[str, torch.Tensor] = {}
        for name in self.teacher_names:
            if name not in outputs or name not in targets:
                raise KeyError(f"teacher {name!r} missing from the model outputs or the targets")
            pred_summary, pred_dense = outputs[name]
            target_summary, target_dense = targets[name]
            if name in self.standardizers:
                target_dense = self.standardizers[name].standardize(target_dense)
            try:
                loss = self.dense_losses[name](pred_dense.float(), target_dense)
                if pred_summary is not None and target_summary is not None and self.summary_weight != 0.0:
                    loss = loss + self.summary_weight * self.summary_loss(pred_summary.float(), target_summary)
            except ValueError as err:
                raise ValueError(f"teacher {name!r}: {err}") from err
            losses[name] = loss
        return losses
