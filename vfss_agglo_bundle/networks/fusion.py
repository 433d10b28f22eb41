"""Inference-time fusion: an eager model that runs faster on the CPU with the same outputs.

``optimize_for_inference`` applies timm re-parameterisation (RepViT/FastViT branches), conv + BatchNorm folding
and channels-last weights. Call it under ``torch.inference_mode()``; ``docs/benchmark.md`` has the before/after
numbers.
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Sequence

import torch
import torch.nn as nn
from timm.layers import BatchNormAct2d
from timm.utils.model import reparameterize_model
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["conv_bn_pairs", "fuse_conv_bn", "optimize_for_inference"]

logger = logging.getLogger(__name__)


def conv_bn_pairs(model: nn.Module, example: torch.Tensor) -> list[tuple[str, str]]:
    """Names of ``(Conv2d, BatchNorm2d)`` pairs that can be folded, found by running ``model`` once on ``example``.

    A pair qualifies when the two are adjacent children of the same parent (conv registered just before the norm),
    each runs exactly once, and the norm's input is the very tensor the conv returned. The caller still checks the
    folded model numerically (:func:`optimize_for_inference` does), since a parent could reuse the conv output.
    """
    convs = {m: n for n, m in model.named_modules() if type(m) is nn.Conv2d}
    norms = {m: n for n, m in model.named_modules() if type(m) in (nn.BatchNorm2d, BatchNormAct2d)}
    outputs: dict[int, tuple[nn.Module, torch.Tensor]] = {}
    calls: dict[nn.Module, int] = {}
    found: list[tuple[nn.Module, nn.Module]] = []

    def after_conv(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        calls[module] = calls.get(module, 0) + 1
        outputs[id(output)] = (module, output)  # keep the tensor alive so its id is not reused

    def before_norm(module: nn.Module, args: tuple) -> None:
        calls[module] = calls.get(module, 0) + 1
        if args and id(args[0]) in outputs and outputs[id(args[0])][1] is args[0]:
            found.append((outputs[id(args[0])][0], module))

    handles = [m.register_forward_hook(after_conv) for m in convs]
    handles += [m.register_forward_pre_hook(before_norm) for m in norms]
    try:
        with torch.inference_mode():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    adjacent = set()
    for parent in model.modules():
        children = list(parent.children())
        adjacent.update(itertools.pairwise(children))
    return [
        (convs[conv], norms[norm])
        for conv, norm in found
        if calls[conv] == 1 and calls[norm] == 1 and (conv, norm) in adjacent and not norm.training
    ]


def fuse_conv_bn(model: nn.Module, pairs: Sequence[tuple[str, str]]) -> nn.Module:
    """Fold each named BatchNorm into its conv, in place (eval mode); a ``BatchNormAct2d`` keeps its activation."""
    for conv_name, norm_name in pairs:
        conv, norm = model.get_submodule(conv_name), model.get_submodule(norm_name)
        rest: nn.Module = nn.Sequential(norm.drop, norm.act) if isinstance(norm, BatchNormAct2d) else nn.Identity()
        model.set_submodule(conv_name, fuse_conv_bn_eval(conv, norm))
        model.set_submodule(norm_name, rest)
    return model


def _randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters (fresh ones are near the identity)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d) and module.running_mean is not None:
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                if module.affine:
                    module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                    module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
    return model


def _max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) / max(1.0, float(a.abs().max()))


def optimize_for_inference(
    model: nn.Module, example: torch.Tensor | None = None, channels_last: bool = True, tolerance: float = 1e-4
) -> nn.Module:
    """A copy of ``model`` for fast eager CPU inference, with the same outputs (checked on ``example``).

    Steps: eval mode and frozen parameters; timm ``reparameterize_model`` (folds RepViT/FastViT/MobileOne branches);
    conv + BatchNorm folding (:func:`conv_bn_pairs`, verified on a copy whose norms have random statistics, skipped
    with a warning when the folded copy differs); channels-last weights. Threads (``torch.set_num_threads``),
    ``torch.inference_mode()`` and batching the frames of a video are up to the caller.

    Args:
        model: e.g. a ``VFSSSegmenter``; left unchanged.
        example: an input ``[B, C, H, W]`` to trace and check with; default ``torch.rand(1, 1, 256, 256)``.
        channels_last: convert weights to ``torch.channels_last``.
        tolerance: largest accepted ``max|optimized - model| / max(1, max|model|)`` on ``example``.

    Raises:
        RuntimeError: the optimized model differs from ``model`` by more than ``tolerance``.
    """
    if example is None:
        example = torch.rand(1, 1, 256, 256)
    fast = copy.deepcopy(model).eval().requires_grad_(False)
    with torch.inference_mode():
        reference = fast(example)
    fast = reparameterize_model(fast, inplace=True)
    pairs = conv_bn_pairs(fast, example)
    probe = _randomize_norms(copy.deepcopy(fast))
    with torch.inference_mode():
        probe_diff = _max_rel_diff(probe(example), fuse_conv_bn(copy.deepcopy(probe), pairs)(example))
    if probe_diff > tolerance:
        logger.warning(
            "conv+BN folding changes the outputs (relative diff %.2e); leaving the norms unfolded", probe_diff
        )
        pairs = []
    fuse_conv_bn(fast, pairs).requires_grad_(False)  # re-parameterised and folded layers have new parameters
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        diff = _max_rel_diff(reference, fast(example))
    if diff > tolerance:
        raise RuntimeError(
            f"optimize_for_inference changed the outputs: relative max abs diff {diff:.2e} > {tolerance}."
        )
    logger.info("optimize_for_inference: folded %d conv+BN pairs, relative max abs diff %.2e", len(pairs), diff)
    return fast
