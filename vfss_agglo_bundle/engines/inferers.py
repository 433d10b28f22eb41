"""An inferer that runs the network in reduced precision and channels-last memory layout, for CPU training.

MONAI's engines autocast only on CUDA (``amp=True``, float16 with a gradient scaler). On a CPU with native
bfloat16 (AVX-512 BF16 or AMX), bfloat16 autocast and channels-last tensors make the segmentation step about 1.3x
faster (``scripts/benchmark.py train``); bfloat16 keeps float32's exponent range, so no gradient scaler is needed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from monai.inferers import Inferer

__all__ = ["AutocastInferer", "fast_bfloat16"]

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def fast_bfloat16(device: str | torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively: a CUDA device that supports it, or a CPU whose oneDNN has
    bfloat16 kernels (AVX-512 BF16 / AMX); elsewhere bfloat16 is emulated and slower than float32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


class AutocastInferer(Inferer):
    """``network(inputs)`` under ``torch.autocast`` in ``dtype``, optionally with channels-last inputs; returns
    float32 logits ``[B, C, H, W]``.

    Args:
        dtype: ``bfloat16``, ``float16``, ``auto`` (bfloat16 where :func:`fast_bfloat16` says the device has it,
            else full precision) or ``None`` (full precision). The resolved dtype is what the stage fingerprints.
        device: the device the network runs on (for ``auto``).
        channels_last: hand the network channels-last inputs (convert the network too, ``Module.to(memory_format=
            torch.channels_last)``).
    """

    def __init__(
        self, dtype: str | None = "auto", device: str | torch.device = "cpu", channels_last: bool = False
    ) -> None:
        super().__init__()
        if dtype == "auto":
            dtype = "bfloat16" if fast_bfloat16(device) else None
        if dtype is not None and dtype not in DTYPES:
            raise ValueError(f"unknown autocast dtype {dtype!r}; choose one of {[*DTYPES, 'auto', None]}.")
        self.dtype = dtype
        self.device_type = torch.device(device).type
        self.channels_last = channels_last

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any) -> Any:
        if self.channels_last and inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device_type, dtype=DTYPES.get(self.dtype), enabled=self.dtype is not None):
            outputs = network(inputs, *args, **kwargs)
        return outputs.float() if torch.is_tensor(outputs) else outputs
