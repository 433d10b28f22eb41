"""Deployment of the segmenter: TorchScript and ONNX files, ONNX Runtime, and the parity check against eager."""

from vfss_agglo_bundle.export.formats import export_onnx, export_torchscript, onnx_runner
from vfss_agglo_bundle.export.parity import mask_dice, parity_check
from vfss_agglo_bundle.export.segmenter import FORMATS, export_segmenter, load_segmenter

__all__ = [
    "FORMATS",
    "export_onnx",
    "export_segmenter",
    "export_torchscript",
    "load_segmenter",
    "mask_dice",
    "onnx_runner",
    "parity_check",
]
