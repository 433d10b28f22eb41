"""Parity of an exported model with eager PyTorch: logit differences and mask Dice on the same frames."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn as nn

__all__ = ["mask_dice", "parity_check"]


def mask_dice(a: torch.Tensor, b: torch.Tensor) -> float:
    """Dice between two boolean masks of the same shape, pooled over all elements (1.0 when both are empty)."""
    a, b = a.bool(), b.bool()
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def parity_check(
    model: nn.Module,
    runner: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[torch.Tensor],
    threshold: float = 0.5,
) -> dict[str, Any]:
    """Compare an exported model with eager ``model`` on batches ``[B, 1, S, S]``.

    Returns ``max_abs_diff`` and ``mean_abs_diff`` of the logits, ``dice`` between the masks
    ``sigmoid(logits) > threshold`` pooled over all frames and tasks, ``min_frame_dice``, ``frames`` and
    ``mask_fraction`` (the share of mask pixels in the eager output, to tell a trivial all-empty Dice apart).
    """
    model = model.eval()
    max_diff, abs_sum, count, frames = 0.0, 0.0, 0, 0
    agree, total, positives, frame_dice = 0, 0, 0, []
    for image in batches:
        with torch.inference_mode():
            ref = model(image).float()
            out = runner(image).float().to(ref.device)
        if out.shape != ref.shape:
            raise ValueError(f"exported model output {tuple(out.shape)} differs from eager {tuple(ref.shape)}")
        diff = (out - ref).abs()
        max_diff = max(max_diff, float(diff.max()))
        abs_sum += float(diff.sum())
        count += diff.numel()
        ref_mask, out_mask = torch.sigmoid(ref) > threshold, torch.sigmoid(out) > threshold
        agree += 2 * int((ref_mask & out_mask).sum())
        total += int(ref_mask.sum()) + int(out_mask.sum())
        positives += int(ref_mask.sum())
        frame_dice += [mask_dice(r, o) for r, o in zip(ref_mask, out_mask, strict=True)]
        frames += image.shape[0]
    if frames == 0:
        raise ValueError("parity_check got no images")
    return {
        "frames": frames,
        "max_abs_diff": max_diff,
        "mean_abs_diff": abs_sum / count,
        "dice": 1.0 if total == 0 else agree / total,
        "min_frame_dice": min(frame_dice),
        "mask_fraction": positives / count,
        "threshold": threshold,
    }
