"""Deployment of the segmenter: TorchScript and ONNX export with a parity check, and a faster eager CPU model.

``export_segmenter`` loads ``models/model.pt`` (the flat ``VFSSSegmenter`` state dict the bundle saves), writes
``model.ts`` (``torch.jit.script``, or ``torch.jit.trace`` when scripting fails) and ``model.onnx`` (dynamic batch,
height and width) atomically, and checks each against eager PyTorch on real frames (a datalist split) or random
images: max abs difference of the logits and Dice between the thresholded masks.

``optimize_for_inference`` returns an equivalent eager model that runs faster on the CPU: timm re-parameterisation
(RepViT/FastViT branches), conv + BatchNorm folding and channels-last weights. Call it under
``torch.inference_mode()``; ``docs/benchmark.md`` has the before/after numbers.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from timm.layers import BatchNormAct2d
from timm.utils.model import reparameterize_model
from torch.nn.utils.fusion import fuse_conv_bn_eval

from vfss_agglo_bundle.data.datalist import load_datalist
from vfss_agglo_bundle.data.io import atomic_path, read_json, write_json
from vfss_agglo_bundle.data.transforms import LoadVFSSFramed
from vfss_agglo_bundle.networks import VFSSSegmenter
from vfss_agglo_bundle.tasks import DEFAULT_TASKS

__all__ = [
    "FORMATS",
    "conv_bn_pairs",
    "export_onnx",
    "export_segmenter",
    "export_torchscript",
    "fuse_conv_bn",
    "load_segmenter",
    "mask_dice",
    "onnx_runner",
    "optimize_for_inference",
    "parity_check",
]

logger = logging.getLogger(__name__)

FORMATS: dict[str, str] = {"torchscript": "model.ts", "onnx": "model.onnx"}
PARITY_FILE = "export_parity.json"
INPUT_NAME = "image"
OUTPUT_NAME = "logits"


def load_segmenter(
    checkpoint: str | os.PathLike, backbone: str, num_classes: int, decoder_width: int = 64
) -> VFSSSegmenter:
    """Build a ``VFSSSegmenter`` and strictly load a flat state dict (``models/model.pt``) into it, in eval mode.

    Raises:
        FileNotFoundError, ValueError: as :meth:`VFSSSegmenter.load_checkpoint`.
    """
    model = VFSSSegmenter(backbone, num_classes=num_classes, decoder_width=decoder_width)
    return model.load_checkpoint(checkpoint).eval()


def export_torchscript(
    model: nn.Module,
    path: str | os.PathLike,
    example: torch.Tensor,
    overwrite: bool = False,
    metadata: dict[str, Any] | None = None,
) -> str:
    """Save ``model`` as TorchScript at ``path`` (atomically) and return the method used: ``script`` or ``trace``.

    ``model`` is switched to eval mode. Scripting keeps all control flow; when it fails the model is traced on
    ``example`` ``[B, 1, S, S]`` (shapes in the traced graph may then be fixed) and a warning says so. ``metadata`` is
    stored as ``metadata.json`` in the archive's extra files (read back with
    ``torch.jit.load(path, _extra_files={"metadata.json": ""})``).
    """
    model = model.eval()
    try:
        compiled = torch.jit.script(model)
        method = "script"
    except Exception as err:  # scripting raises many error types for unsupported Python
        logger.warning(
            "torch.jit.script failed (%s: %s); falling back to torch.jit.trace on an input of shape %s - "
            "data-dependent control flow is frozen to that trace.",
            type(err).__name__,
            str(err).splitlines()[0] if str(err) else "",
            tuple(example.shape),
        )
        with torch.no_grad():
            compiled = torch.jit.trace(model, example)
        method = "trace"
    extra = {"metadata.json": json.dumps({**(metadata or {}), "torchscript_method": method})}
    with atomic_path(path, overwrite=overwrite, suffix=".ts") as tmp:
        torch.jit.save(compiled, str(tmp), _extra_files=extra)
    return method


def _onnx_dynamic_axes(path: str | os.PathLike) -> dict[str, list[int]]:
    """Axes of each graph input and output that have a named symbolic (dynamic) size in the saved ONNX model."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return {
        value.name: [i for i, dim in enumerate(value.type.tensor_type.shape.dim) if dim.dim_param]
        for value in [*graph.input, *graph.output]
    }


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    example: torch.Tensor,
    opset: int = 18,
    dynamo: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Save ``model`` (``[B, 1, H, W]`` -> ``[B, T, H, W]``) as one self-contained ONNX file at ``path``, atomically.

    Batch, height and width are exported as dynamic axes. With ``dynamo=True`` the ``torch.export``-based exporter
    is tried first and, when it fails, the TorchScript-based one (``dynamo=False``) is used with a warning.

    Returns:
        ``{"exporter": "dynamo" | "torchscript", "opset": opset, "dynamic_axes": {name: [axes]}}``.
    """
    model = model.eval()
    dims = {0: "batch", 2: "height", 3: "width"}
    exporters = ["dynamo", "torchscript"] if dynamo else ["torchscript"]
    with atomic_path(path, overwrite=overwrite, suffix=".onnx") as tmp:
        for exporter in exporters:
            try:
                if exporter == "dynamo":
                    dynamic = {axis: torch.export.Dim.DYNAMIC for axis in dims}
                    options = dict(dynamo=True, external_data=False, dynamic_shapes=(dynamic,))
                else:
                    options = dict(dynamo=False, dynamic_axes={INPUT_NAME: dims, OUTPUT_NAME: dims})
                torch.onnx.export(
                    model,
                    (example,),
                    str(tmp),
                    opset_version=opset,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    **options,
                )
                break
            except Exception as err:  # the exporters raise many error types
                if exporter == exporters[-1]:
                    raise RuntimeError(f"ONNX export to {path} failed with the {exporter} exporter: {err}") from err
                logger.warning(
                    "the dynamo ONNX exporter failed (%s: %s); falling back to the TorchScript one (dynamo=False).",
                    type(err).__name__,
                    str(err).splitlines()[0] if str(err) else "",
                )
        axes = _onnx_dynamic_axes(tmp)
    return {"exporter": exporter, "opset": opset, "dynamic_axes": axes}


def onnx_runner(path: str | os.PathLike, threads: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """ONNX Runtime CPU session as a function ``[B, 1, H, W]`` -> logits ``[B, T, H, W]`` (torch tensors)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(image: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: image.detach().cpu().float().numpy()})[0])

    return run


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
        frame_dice += [mask_dice(r, o) for r, o in zip(ref_mask, out_mask)]
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


def _frame_batches(
    datalist: str | os.PathLike | None,
    split: str,
    image_size: int,
    max_frames: int,
    batch_size: int,
    tasks: Sequence[str] | None,
) -> tuple[list[torch.Tensor], str]:
    """Batches ``[B, 1, S, S]`` of frames from a datalist split, or of seeded random images when none is given."""
    if datalist is None:
        generator = torch.Generator().manual_seed(0)
        images = [torch.rand(1, image_size, image_size, generator=generator) for _ in range(max_frames)]
        source = f"{max_frames} random images"
    else:
        items = load_datalist(datalist, split, tasks)[:max_frames]
        if not items:
            raise ValueError(f"{datalist} has no frames in its {split!r} split; choose another --split.")
        loader = LoadVFSSFramed(keys=("image",), image_size=image_size)
        images = [torch.as_tensor(loader(item)["image"]).float() for item in items]
        source = f"{len(items)} frames of {datalist} ({split})"
    batches = [torch.stack(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    return batches, source


def export_segmenter(
    checkpoint: str | os.PathLike = "models/model.pt",
    out_dir: str | os.PathLike = "models",
    backbone: str = "efficientvit_b0",
    num_classes: int | None = None,
    image_size: int = 256,
    formats: Sequence[str] = ("torchscript", "onnx"),
    datalist: str | os.PathLike | None = None,
    split: str = "test",
    max_frames: int = 16,
    batch_size: int = 4,
    tasks: Sequence[str] | None = None,
    decoder_width: int = 64,
    opset: int = 18,
    dynamo: bool = True,
    threshold: float = 0.5,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Export the trained segmenter and check parity; writes ``out_dir/{model.ts, model.onnx, export_parity.json}``.

    Args:
        checkpoint: flat ``VFSSSegmenter`` state dict.
        out_dir: destination folder.
        backbone, num_classes, decoder_width: the architecture it was trained with (``num_classes`` defaults to
            the number of ``tasks``: given, else the datalist's, else ``DEFAULT_TASKS``).
        image_size: side S of the example input and of the parity frames.
        formats: any of ``torchscript``, ``onnx``.
        datalist, split, max_frames: frames for the parity check; random images when ``datalist`` is None.
        batch_size: parity batch size (the ONNX model is run with this batch, so dynamic batch is exercised).
        opset, dynamo: ONNX opset and exporter (see :func:`export_onnx`).
        threshold: sigmoid threshold of the masks compared by Dice.
        overwrite: replace existing outputs (otherwise ``FileExistsError`` before anything is written).

    Returns:
        The parity report (also written as JSON): per format its file, method and parity numbers.
    """
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise ValueError(f"unknown export formats {unknown or list(formats)}; choose from {sorted(FORMATS)}.")
    out_dir = Path(out_dir)
    targets = {fmt: out_dir / FORMATS[fmt] for fmt in formats}
    existing = [str(p) for p in [*targets.values(), out_dir / PARITY_FILE] if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"refusing to overwrite {existing}; delete them or pass --overwrite.")
    if tasks is None and datalist is not None:
        tasks = read_json(datalist).get("tasks")
    tasks = list(tasks) if tasks is not None else None
    num_classes = int(num_classes or len(tasks or DEFAULT_TASKS))
    model = load_segmenter(checkpoint, backbone, num_classes, decoder_width)
    batches, source = _frame_batches(datalist, split, image_size, max_frames, batch_size, tasks)
    example = torch.rand(1, 1, image_size, image_size)
    metadata = {"backbone": backbone, "num_classes": num_classes, "image_size": image_size, "tasks": tasks}
    report: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        **metadata,
        "parity_inputs": source,
        "torch_version": torch.__version__,
        "formats": {},
    }
    for fmt, path in targets.items():
        logger.info("exporting %s to %s", fmt, path)
        if fmt == "torchscript":
            info: dict[str, Any] = {"method": export_torchscript(model, path, example, overwrite, metadata)}
            runner: Callable[[torch.Tensor], torch.Tensor] = torch.jit.load(str(path), map_location="cpu")
        else:
            info = export_onnx(model, path, example, opset=opset, dynamo=dynamo, overwrite=overwrite)
            runner = onnx_runner(path)
        info.update(file=str(path), parity=parity_check(model, runner, batches, threshold))
        logger.info("%s parity: %s", fmt, info["parity"])
        report["formats"][fmt] = info
    write_json(out_dir / PARITY_FILE, report, overwrite=overwrite)
    return report


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
        adjacent.update(zip(children, children[1:]))
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
