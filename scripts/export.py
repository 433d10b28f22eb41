"""Export the trained segmenter (``models/model.pt``) to TorchScript and ONNX, with a parity check.

    python scripts/export.py --backbone efficientvit_b0 --image_size 256
    python scripts/export.py --checkpoint models/model.pt --out_dir models --datalist data/phantom/datalist.json \\
        --split test --max_frames 16 --formats torchscript,onnx --overwrite

Writes ``<out_dir>/model.ts`` (``torch.jit.script``, or ``torch.jit.trace`` with a warning when scripting fails),
``<out_dir>/model.onnx`` (opset 18, dynamic batch/height/width; the dynamo exporter first, ``--dynamo False`` for
the TorchScript-based one) and ``<out_dir>/export_parity.json`` (max abs logit difference and mask Dice against eager
PyTorch on the given frames, or on random images without ``--datalist``). Existing files are kept unless
``--overwrite``. MONAI's own ``python -m monai.bundle ckpt_export network_def --filepath models/model.ts
--ckpt_file models/model.pt --meta_file configs/metadata.json --config_file configs/inference.json`` also writes the
TorchScript model (without the parity check).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import fire
from vfss_agglo_bundle.export import export_segmenter
from vfss_agglo_bundle.utils.cli import split_names


def export(
    checkpoint: str = "models/model.pt",
    out_dir: str = "models",
    backbone: str = "efficientvit_b0",
    num_classes: int | None = None,
    image_size: int = 256,
    formats: str | Sequence[str] = "torchscript,onnx",
    datalist: str | None = None,
    split: str = "test",
    max_frames: int = 16,
    batch_size: int = 4,
    tasks: str | Sequence[str] | None = None,
    decoder_width: int = 64,
    opset: int = 18,
    dynamo: bool = True,
    threshold: float = 0.5,
    overwrite: bool = False,
) -> None:
    """Export and print one parity line per format."""
    report = export_segmenter(
        checkpoint=checkpoint,
        out_dir=out_dir,
        backbone=backbone,
        num_classes=num_classes,
        image_size=image_size,
        formats=split_names(formats),
        datalist=datalist,
        split=split,
        max_frames=max_frames,
        batch_size=batch_size,
        tasks=None if tasks is None else split_names(tasks),
        decoder_width=decoder_width,
        opset=opset,
        dynamo=dynamo,
        threshold=threshold,
        overwrite=overwrite,
    )
    print(f"parity on {report['parity_inputs']}:")
    for fmt, info in report["formats"].items():
        p = info["parity"]
        how = info.get("method") or info.get("exporter")
        print(
            f"  {fmt:12s} {info['file']} ({how}): max abs diff {p['max_abs_diff']:.2e}, mask Dice {p['dice']:.5f} "
            f"(min per frame {p['min_frame_dice']:.5f}, mask fraction {p['mask_fraction']:.3f})"
        )


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    logging.getLogger("vfss_agglo_bundle").setLevel(logging.INFO)
    fire.Fire(export)
