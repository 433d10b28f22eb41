"""Stopping a training stage whose loss is not finite or diverges, before anything of the bad state is written.

Attached at ``ITERATION_COMPLETED``: it raises inside the epoch, so the epoch never completes and neither the resume
checkpoint (saved at epoch end) nor the best model (after validation) sees the bad weights; the last good resume
point stays, and running the same command again resumes from it. Under torchrun every rank checks the loss averaged
over the ranks, so all stop together. It only watches the run: no stage fingerprint names it.
"""

from __future__ import annotations

import logging
import math

import torch
from ignite.engine import Engine, Events
from monai.handlers import from_engine
from vfss_agglo_bundle.utils.distributed import mean_over_ranks

__all__ = ["LossGuard"]

logger = logging.getLogger(__name__)


class LossGuard:
    """Raise a ``FloatingPointError`` when the loss is NaN or infinite, or when it stays above ``factor`` x its
    reference level (the mean of the first ``window`` iterations this process ran) for ``patience`` iterations in a
    row.

    Args:
        stage: the stage's name, for the message.
        factor: how far above the reference level counts as diverged (``None``: only non-finite losses stop).
        patience: consecutive iterations above it before stopping.
        window: iterations whose mean is the reference level.
    """

    def __init__(self, stage: str, factor: float | None = 10.0, patience: int = 20, window: int = 10) -> None:
        if factor is not None and factor <= 1.0:
            raise ValueError(f"divergence_factor must be > 1 (or null: no divergence check), got {factor}.")
        self.stage, self.factor, self.patience, self.window = stage, factor, int(patience), int(window)
        self._first: list[float] = []
        self._above = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        loss = torch.as_tensor(from_engine(["loss"], first=True)(engine.state.output), dtype=torch.float64)
        value = float(mean_over_ranks(loss))
        where = f"epoch {engine.state.epoch}, iteration {engine.state.iteration}"
        advice = (
            "Nothing of this epoch was saved: models/ keeps the last good resume point and running the same command "
            "again resumes from it. Lower the learning rate (seg_lr or distill_lr) or check the data first."
        )
        if not math.isfinite(value):
            raise FloatingPointError(f"stage {self.stage}: the loss is {value} at {where}. {advice}")
        if len(self._first) < self.window:
            self._first.append(value)
            return
        if self.factor is None:
            return
        reference = sum(self._first) / len(self._first)
        self._above = self._above + 1 if value > self.factor * reference else 0
        if self._above >= self.patience:
            raise FloatingPointError(
                f"stage {self.stage}: the loss diverged: {value:.4g} at {where}, above {self.factor:g} x its first "
                f"{self.window} iterations' mean ({reference:.4g}) for {self.patience} iterations in a row. {advice}"
            )
