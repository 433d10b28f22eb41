"""Readers and writers for VFSS frames, multi-label masks, videos and JSON, with atomic writes.

On-disk conventions (see docs/data_format.md):

- a frame is an 8-bit grey PNG, read as a numpy array ``[H, W]`` (row, column);
- a label is a uint8 NIfTI whose array is stored ``[W, H, T]`` (x = column, y = row, one channel per task), the
  MONAI/ITK convention, so it overlays the PNG in ITK-SNAP or 3D Slicer; in memory it is ``[T, H, W]``.

Every writer goes through a temporary file in the target folder and ``os.replace``: a crash never leaves a
half-written file under the final name, and nothing is overwritten unless ``overwrite=True``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from PIL import Image, UnidentifiedImageError

PathLike = str | os.PathLike
logger = logging.getLogger(__name__)


class DataFormatError(ValueError):
    """A data file exists but cannot be used; the message names the file and says what to do."""


@contextmanager
def atomic_path(path: PathLike, overwrite: bool = False, suffix: str = "", keep_old: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    A write that fails (disk full, read-only folder, a crash) leaves ``path`` and its folder as they were.

    Args:
        path: final destination.
        overwrite: allow replacing an existing file (otherwise ``FileExistsError``).
        suffix: extension the temporary name must end with (writers such as nibabel pick the format from it).
        keep_old: once the new file is complete, an existing ``path`` is renamed to its timestamped name
            (:func:`keep_previous`) instead of being replaced.
    """
    path = Path(path)
    if path.exists() and not (overwrite or keep_old):
        raise FileExistsError(f"{path} already exists; refusing to overwrite it (delete it or pass overwrite=True).")
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
        os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the final file the usual permissions
        yield Path(tmp)
        if keep_old:
            keep_previous(path)
        os.replace(tmp, path)
    except OSError as err:
        message = (
            f"could not write {path} ({err.strerror or err}); any earlier {path.name} is unchanged. "
            "Free some space or choose a writable folder, then run again."
        )
        raise (OSError(err.errno, message) if err.errno is not None else OSError(message)) from err
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def keep_previous(path: PathLike) -> Path | None:
    """Rename an existing ``path`` to ``<stem>.<modification time><suffix>`` so a new one can be written; returns it."""
    path = Path(path)
    if not path.exists():
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(path.stat().st_mtime))
    kept = path.with_name(f"{path.stem}.{stamp}{path.suffix}")
    n = 1
    while kept.exists():
        kept = path.with_name(f"{path.stem}.{stamp}-{n}{path.suffix}")
        n += 1
    os.replace(path, kept)
    logger.info("kept the previous %s as %s", path, kept.name)
    return kept


def save_torch(obj: Any, path: PathLike, overwrite: bool = False) -> None:
    """``torch.save`` atomically, with byte-identical files for identical objects.

    ``torch.save`` names the records of its zip archive after the file it writes; saving through a buffer keeps
    the random temporary name out of the file, so checkpoint hashes compare runs.
    """
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path, overwrite=overwrite, suffix=".pt") as tmp:
        tmp.write_bytes(buffer.getvalue())


def read_state_dict(path: PathLike, what: str = "checkpoint") -> dict[str, Any]:
    """Read a flat state dict of tensors written by ``torch.save`` (on the CPU, ``weights_only``).

    Raises:
        FileNotFoundError: no file at ``path`` (the message names ``what``).
        ValueError: the file is not a readable torch file, or not a flat ``{name: tensor}`` dict.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for unreadable or non-tensor pickles
        raise ValueError(f"cannot read {what} {path} ({type(err).__name__}: {err}).") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"{path} is not a flat state dict of tensors; save it with torch.save(model.state_dict(), path)."
        )
    return state


def write_json(path: PathLike, obj: Any, overwrite: bool = False, keep_old: bool = False) -> None:
    """Write ``obj`` as indented JSON, atomically (``overwrite`` and ``keep_old`` as in :func:`atomic_path`)."""
    with atomic_path(path, overwrite=overwrite, suffix=".json", keep_old=keep_old) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


def read_json(path: PathLike) -> Any:
    """Read a JSON file with an error that names it when it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataFormatError(f"{path} is not valid JSON ({e}); fix or regenerate it.") from e


def read_frame(path: PathLike) -> np.ndarray:
    """Read an 8-bit grey frame. Returns uint8 ``[H, W]``.

    Raises:
        DataFormatError: the file is not a readable image, not grey (``L``) or not 8-bit.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"frame {path} does not exist.")
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            array = np.array(im)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataFormatError(
            f"frame {path} cannot be read as an image ({e}); re-export it as an 8-bit grey PNG."
        ) from e
    if mode != "L":
        raise DataFormatError(
            f"frame {path} has PIL mode {mode!r}; frames must be 8-bit grey ('L'). Convert it, e.g. "
            "`scripts/prepare_data.py import_masks` converts colour and 16-bit frames."
        )
    return array


def to_grey_uint8(image: np.ndarray) -> np.ndarray:
    """Convert an RGB(A) or 16-bit/float image ``[H, W(, C)]`` to 8-bit grey ``[H, W]``."""
    image = np.asarray(image)
    if image.ndim == 3:
        image = image[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    if image.dtype == np.uint8:
        return image
    image = image.astype(np.float64)
    lo, hi = float(image.min()), float(image.max())
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return np.clip(np.round((image - lo) * scale), 0, 255).astype(np.uint8)


def write_frame(path: PathLike, image: np.ndarray, overwrite: bool = False) -> None:
    """Write a uint8 ``[H, W]`` frame as a grey PNG, atomically."""
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError(f"write_frame expects uint8 [H, W], got {image.dtype} {list(image.shape)} for {path}.")
    with atomic_path(path, overwrite=overwrite, suffix=".png") as tmp:
        Image.fromarray(image, mode="L").save(tmp)


def read_label(path: PathLike) -> np.ndarray:
    """Read a multi-label mask. Returns uint8 ``[T, H, W]`` with values in {0, 1}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label {path} does not exist.")
    try:
        data = np.asarray(nib.load(str(path)).dataobj)
    except Exception as e:  # nibabel raises many types for truncated or foreign files
        raise DataFormatError(f"label {path} cannot be read as NIfTI ({type(e).__name__}: {e}); regenerate it.") from e
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim != 3:
        raise DataFormatError(f"label {path} has shape {list(data.shape)}; expected [W, H, T] (x, y, task).")
    return np.ascontiguousarray(np.transpose(data, (2, 1, 0)) > 0).astype(np.uint8)


def write_label(path: PathLike, label: np.ndarray, overwrite: bool = False) -> None:
    """Write a ``[T, H, W]`` binary mask as a uint8 NIfTI stored ``[W, H, T]``, atomically."""
    if label.ndim != 3:
        raise ValueError(f"write_label expects [T, H, W], got {list(label.shape)} for {path}.")
    data = np.ascontiguousarray(np.transpose(label > 0, (2, 1, 0))).astype(np.uint8)
    suffix = ".nii.gz" if str(path).endswith(".gz") else ".nii"
    with atomic_path(path, overwrite=overwrite, suffix=suffix) as tmp:
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp))


def read_video(path: PathLike) -> Iterator[np.ndarray]:
    """Yield the frames of a video file (any format ffmpeg reads) as uint8 grey ``[H, W]``."""
    import imageio.v3 as iio

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video {path} does not exist.")
    try:
        for frame in iio.imiter(path):
            yield to_grey_uint8(frame)
    except (OSError, RuntimeError, ValueError) as e:
        raise DataFormatError(f"video {path} cannot be decoded ({e}).") from e
