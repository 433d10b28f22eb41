"""Per-task segmentation metrics for multi-label VFSS masks, as an ignite ``Metric`` for MONAI evaluators.

Empty masks are common (no bolus before the swallow) and are scored on purpose, per frame and task:

=====================  ======  =====  ==========================================
prediction / label     Dice    IoU    HD95 (pixels)
=====================  ======  =====  ==========================================
both non-empty         usual   usual  95th percentile symmetric surface distance
both empty             1       1      0
exactly one empty      0       0      the image diagonal (the worst possible)
=====================  ======  =====  ==========================================

Scores are averaged over frames per task; ``mean_*`` averages the tasks. Because a structure that comes and goes
(the bolus) scores 1 on every frame where it is absent and predicted absent, and 0 where one stray pixel is
predicted, two more figures separate presence from shape: ``dice_present`` averages Dice over the frames where the
label has the structure, and ``fp_rate`` is the share of the frames where it is absent that have a prediction.
Either is ``nan`` for a task with no such frame (its ``mean_*`` averages the tasks that have one).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import torch
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced, sync_all_reduce
from monai.metrics import compute_hausdorff_distance

METRICS: tuple[str, ...] = ("dice", "iou", "hd95")
PRESENCE_METRICS: tuple[str, ...] = ("dice_present", "fp_rate")


def segmentation_scores(pred: torch.Tensor, label: torch.Tensor, hd95: bool = True) -> dict[str, torch.Tensor]:
    """Per-frame, per-task scores of binary masks.

    Args:
        pred: ``[N, T, H, W]`` binary prediction.
        label: ``[N, T, H, W]`` binary ground truth.
        hd95: also compute HD95 (slower: distance transforms).

    Returns:
        ``{"dice": [N,T], "iou": [N,T]}`` (+ ``"hd95": [N,T]``), float64, empty cases as in the module docstring.
    """
    if pred.shape != label.shape or pred.ndim != 4:
        raise ValueError(f"pred and label must both be [N,T,H,W]; got {list(pred.shape)} and {list(label.shape)}.")
    p, y = pred.bool(), label.bool()
    inter = (p & y).sum((2, 3)).double()
    p_sum, y_sum = p.sum((2, 3)).double(), y.sum((2, 3)).double()
    union = p_sum + y_sum - inter
    both_empty = (p_sum == 0) & (y_sum == 0)
    one_empty = (p_sum == 0) ^ (y_sum == 0)
    dice = torch.where(both_empty, 1.0, 2 * inter / (p_sum + y_sum).clamp_min(1))
    iou = torch.where(both_empty, 1.0, inter / union.clamp_min(1))
    scores = {"dice": dice, "iou": iou}
    if hd95:
        worst = math.hypot(*pred.shape[-2:])
        dist = torch.zeros_like(dice)
        both = ~(both_empty | one_empty)
        if both.any():
            with warnings.catch_warnings():  # empty masks are handled above, on purpose
                warnings.simplefilter("ignore")
                full = compute_hausdorff_distance(p.float(), y.float(), include_background=True, percentile=95)
            full = full.double()
            dist = torch.where(both, full.to(dist), dist)
        scores["hd95"] = torch.where(one_empty, worst, dist)
    return scores


class MultiTaskSegMetrics(Metric):
    """Accumulates :func:`segmentation_scores` over an evaluation run.

    Args:
        tasks: task names, one per channel.
        output_transform: maps the engine output to ``(pred [N,T,H,W], label [N,T,H,W])``, binary (threshold first).
        hd95: include HD95.
        reduce: ``"all"`` returns ``{"<metric>_<task>": float, "mean_<metric>": float}`` for ``dice``, ``iou``,
            ``hd95``, ``dice_present`` and ``fp_rate``; ``"mean_dice"`` returns the scalar mean Dice (usable as a
            key metric for best-model selection).
        keep_frames: with ``reduce="all"``, also return ``"per_frame"``: ``{metric: [N, T] tensor}`` of every frame
            in the order they were seen (for per-study means; on one process only: not gathered across ranks).
    """

    def __init__(
        self,
        tasks: Sequence[str],
        output_transform: Callable = lambda x: x,
        hd95: bool = True,
        reduce: str = "all",
        keep_frames: bool = False,
        device: str | torch.device = "cpu",
    ) -> None:
        if reduce not in ("all", "mean_dice"):
            raise ValueError(f"reduce must be 'all' or 'mean_dice', got {reduce!r}.")
        self.tasks = list(tasks)
        self.hd95 = hd95 and reduce == "all"
        self.reduce = reduce
        self.keep_frames = keep_frames and reduce == "all"
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._names = METRICS if self.hd95 else METRICS[:2]
        self._sums = torch.zeros(len(self._names), len(self.tasks), dtype=torch.float64, device=self._device)
        self._count = torch.zeros((), dtype=torch.float64, device=self._device)
        # per task: frames with the structure, their Dice sum, frames without it, false positives among them
        self._presence = torch.zeros(4, len(self.tasks), dtype=torch.float64, device=self._device)
        self._frames: list[dict[str, torch.Tensor]] = []

    @reinit__is_reduced
    def update(self, output: Sequence[torch.Tensor]) -> None:
        pred, label = (torch.stack(list(o)) if isinstance(o, (list, tuple)) else o for o in output)
        pred, label = pred.detach(), label.detach()
        if pred.ndim == 3:
            pred, label = pred[None], label[None]
        if pred.shape[1] != len(self.tasks):
            raise ValueError(
                f"prediction has {pred.shape[1]} channels but there are {len(self.tasks)} tasks {self.tasks}."
            )
        scores = segmentation_scores(pred, label, hd95=self.hd95)
        for i, name in enumerate(self._names):
            self._sums[i] += scores[name].sum(0).to(self._device)
        self._count += pred.shape[0]
        present = label.flatten(2).any(2).to(self._device)
        predicted = pred.flatten(2).any(2).to(self._device)
        dice = scores["dice"].to(self._device)
        self._presence[0] += present.sum(0)
        self._presence[1] += torch.where(present, dice, 0.0).sum(0)
        self._presence[2] += (~present).sum(0)
        self._presence[3] += (~present & predicted).sum(0)
        if self.keep_frames:
            frame = {name: scores[name].cpu() for name in self._names}
            frame["present"], frame["predicted"] = present.cpu(), predicted.cpu()
            self._frames.append(frame)

    @sync_all_reduce("_count", "_sums", "_presence")
    def compute(self) -> float | dict[str, float]:
        if self._count == 0:
            raise RuntimeError("MultiTaskSegMetrics needs at least one frame before compute().")
        means = dict(zip(self._names, self._sums / self._count, strict=True))
        if self.reduce == "mean_dice":
            return float(means["dice"].mean())
        present, dice_sum, absent, false_pos = self._presence
        means["dice_present"] = torch.where(present > 0, dice_sum / present.clamp_min(1), math.nan)
        means["fp_rate"] = torch.where(absent > 0, false_pos / absent.clamp_min(1), math.nan)
        result: dict = {}
        for name, per_task in means.items():
            result.update({f"{name}_{task}": float(v) for task, v in zip(self.tasks, per_task, strict=True)})
            result[f"mean_{name}"] = float(per_task.nanmean()) if not per_task.isnan().all() else math.nan
        if self.keep_frames:
            result["per_frame"] = {k: torch.cat([f[k] for f in self._frames]) for k in self._frames[0]}
        return result
