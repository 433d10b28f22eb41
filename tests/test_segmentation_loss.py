"""Stage 2's loss (Dice + per-task BCE) and its bfloat16 / channels-last inferer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss
from vfss_agglo_bundle.engines import AutocastInferer, fast_bfloat16
from vfss_agglo_bundle.losses import DiceBCELoss
from vfss_agglo_bundle.networks.segmenter import VFSSSegmenter


def _by_hand(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice per sample and channel, and BCE, written out from their definitions."""
    p = 1 / (1 + torch.exp(-logits.double()))
    t = target.double()
    inter = (p * t).sum((2, 3))
    dice = 1 - (2 * inter + 1e-5) / (p.sum((2, 3)) + t.sum((2, 3)) + 1e-5)
    bce = -(t * torch.log(p) + (1 - t) * torch.log(1 - p)).mean()
    return 0.5 * dice.mean() + 0.5 * bce


def test_dice_bce_matches_its_definition():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 8, 8, generator=g) * 3
    target = (torch.rand(3, 4, 8, 8, generator=g) > 0.6).float()
    target[0, 1] = 0  # an absent structure
    got = DiceBCELoss()(logits, target)
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(float(_by_hand(logits, target)), rel=1e-5)


def test_dice_bce_penalises_background_false_positives_where_dice_ce_does_not():
    # one pixel that belongs to no structure, predicted as every structure: MONAI's DiceCELoss's cross-entropy is a
    # softmax across channels, and an all-zero target gives it nothing to penalise
    target = torch.zeros(1, 3, 1, 1)
    confident, unsure = torch.full((1, 3, 1, 1), 8.0), torch.zeros(1, 3, 1, 1)
    ce_only = DiceCELoss(sigmoid=True, lambda_dice=0.0, lambda_ce=1.0)
    assert float(ce_only(confident, target)) == float(ce_only(unsure, target)) == 0.0
    bce_only = DiceBCELoss(lambda_dice=0.0, lambda_bce=1.0)
    assert float(bce_only(confident, target)) == pytest.approx(8.000335, rel=1e-5)  # log(1 + e^8)
    assert float(bce_only(unsure, target)) == pytest.approx(0.693147, rel=1e-5)  # log 2


def test_dice_bce_refuses_bad_settings_and_shapes():
    with pytest.raises(ValueError, match="not both 0"):
        DiceBCELoss(0.0, 0.0)
    with pytest.raises(ValueError, match="same shape"):
        DiceBCELoss()(torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 4, 4))


def test_autocast_inferer_resolves_its_dtype_and_returns_float32_logits():
    assert AutocastInferer(None).dtype is None
    assert AutocastInferer("auto", "cpu").dtype == ("bfloat16" if fast_bfloat16("cpu") else None)
    assert AutocastInferer("bfloat16").dtype == "bfloat16"
    with pytest.raises(ValueError, match="unknown autocast dtype 'int8'"):
        AutocastInferer("int8")
    net = VFSSSegmenter("efficientvit_b0", num_classes=3, init_seed=0).eval()
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = net(x)
        full = AutocastInferer(None, channels_last=True)(x, net.to(memory_format=torch.channels_last))
        half = AutocastInferer("bfloat16", channels_last=True)(x, net)
    assert full.dtype == half.dtype == torch.float32 and full.shape == (2, 3, 64, 64)
    torch.testing.assert_close(full, reference, rtol=1e-4, atol=1e-4)  # layout alone changes nothing
    assert (half - reference).abs().max() < 0.1 * reference.abs().max()  # bfloat16: about 3 significant digits
    assert not torch.equal(half, reference)


def test_small_regions_of_the_named_tasks_are_removed_as_skimage_removes_them():
    from skimage.morphology import remove_small_objects
    from vfss_agglo_bundle.data.transforms import RemoveSmallRegionsd, remove_small_regions

    rng = np.random.default_rng(0)
    masks = (rng.random((3, 40, 50)) > 0.8).astype(np.uint8)  # specks and a few larger clusters
    masks[0, 5:15, 5:15] = 1  # a 100-pixel square
    min_area = {"bolus": 0.01, "hyoid": 0.004, "mandible_not_here": 0.5}  # 20 and 8 pixels of 2,000
    out = remove_small_regions(masks, ["bolus", "hyoid", "c4"], min_area)
    np.testing.assert_array_equal(out[0], remove_small_objects(masks[0].astype(bool), max_size=19, connectivity=2))
    np.testing.assert_array_equal(out[1], remove_small_objects(masks[1].astype(bool), max_size=7, connectivity=2))
    np.testing.assert_array_equal(out[2], masks[2])  # not named: untouched
    assert out[0, 5:15, 5:15].all() and out[0].sum() < masks[0].sum()
    pred = torch.as_tensor(masks, dtype=torch.float32)
    cleaned = RemoveSmallRegionsd("pred", ["bolus", "hyoid", "c4"], min_area)({"pred": pred})["pred"]
    assert cleaned.dtype == torch.float32 and torch.equal(cleaned, torch.as_tensor(out, dtype=torch.float32))
