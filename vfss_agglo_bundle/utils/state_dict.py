"""Reading, saving and hashing state dicts: one reader and one writer for every checkpoint the package handles."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from vfss_agglo_bundle.utils.distributed import is_main_process, unwrap_ddp
from vfss_agglo_bundle.utils.io import PathLike, save_torch

__all__ = ["hash_state_dict", "read_state_dict", "save_state_dict"]


def read_state_dict(
    path: PathLike, what: str = "checkpoint", unwrap: Sequence[str] = (), strip_prefix: str | None = None
) -> dict[str, torch.Tensor]:
    """Read a ``{name: tensor}`` state dict written by ``torch.save`` (on the CPU, ``weights_only``).

    Args:
        path: the file.
        what: what the file is, for error messages (``"segmenter checkpoint"``).
        unwrap: keys of a training checkpoint whose value is the state dict (``("model", "state_dict")``); the first
            one present is taken, repeatedly (``{"model": {"state_dict": ...}}``).
        strip_prefix: removed from the start of every key (``"module."`` of DataParallel/DDP checkpoints).

    Tensors saved on CUDA are mapped to the CPU.

    Raises:
        FileNotFoundError: no file at ``path`` (the message names ``what``).
        ValueError: the file is not a readable torch file, or not a flat ``{name: tensor}`` dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        state: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for unreadable or non-tensor pickles
        raise ValueError(
            f"cannot read {what} {path}: not a readable torch checkpoint of tensors ({type(err).__name__}: {err}); "
            "re-save it with torch.save(model.state_dict(), path)."
        ) from err
    while isinstance(state, Mapping):
        wrapper = next((key for key in unwrap if isinstance(state.get(key), Mapping)), None)
        if wrapper is None:
            break
        state = state[wrapper]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        found = type(state).__name__
        raise ValueError(
            f"{path} ({what}) is not a flat state dict of tensors (it holds a {found}); "
            "save it with torch.save(model.state_dict(), path)."
        )
    if strip_prefix:
        return {str(k).removeprefix(strip_prefix): v for k, v in state.items()}
    return dict(state)


def hash_state_dict(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 hex digest over a state dict: keys in sorted order, each with dtype, shape and raw bytes."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def save_state_dict(module: torch.nn.Module, path: PathLike, overwrite: bool = False) -> None:
    """Save ``module``'s flat state dict (DDP unwrapped) atomically and byte-deterministically; rank 0 only."""
    if is_main_process():
        save_torch(unwrap_ddp(module).state_dict(), path, overwrite=overwrite)
