"""Export of the trained segmenter: TorchScript and ONNX files with a parity check against eager PyTorch.

``export_segmenter`` loads ``models/model.pt`` (the flat ``VFSSSegmenter`` state dict the bundle saves), writes
``model.ts`` (``torch.jit.script``, or ``torch.jit.trace`` when scripting fails) and ``model.onnx`` (dynamic batch,
height and width) atomically, and checks each against eager PyTorch on real frames (a datalist split) or random
images: max abs difference of the logits and Dice between the thresholded masks.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from vfss_agglo_bundle.data.datalist import load_datalist
from vfss_agglo_bundle.data.tasks import DEFAULT_TASKS
from vfss_agglo_bundle.data.transforms import LoadVFSSFramed
from vfss_agglo_bundle.export.formats import export_onnx, export_torchscript, onnx_runner
from vfss_agglo_bundle.export.parity import parity_check
from vfss_agglo_bundle.networks.segmenter import VFSSSegmenter
from vfss_agglo_bundle.utils.io import read_json, write_json

__all__ = ["FORMATS", "PARITY_FILE", "export_segmenter", "load_segmenter"]

logger = logging.getLogger(__name__)

FORMATS: dict[str, str] = {"torchscript": "model.ts", "onnx": "model.onnx"}
PARITY_FILE = "export_parity.json"


def load_segmenter(
    checkpoint: str | os.PathLike, backbone: str, num_classes: int, decoder_width: int = 64
) -> VFSSSegmenter:
    """Build a ``VFSSSegmenter`` and strictly load a flat state dict (``models/model.pt``) into it, in eval mode.

    Raises:
        FileNotFoundError, ValueError: as :meth:`VFSSSegmenter.load_checkpoint`.
    """
    model = VFSSSegmenter(backbone, num_classes=num_classes, decoder_width=decoder_width)
    return model.load_checkpoint(checkpoint).eval()


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
