"""Writing a model as TorchScript or ONNX (atomically), and running an ONNX model on ONNX Runtime."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from vfss_agglo_bundle.utils.io import atomic_path

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "export_onnx", "export_torchscript", "onnx_runner"]

logger = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "logits"


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
