"""Readers and writers of VFSS frames, multi-label masks and videos, in the bundle's on-disk format.

On-disk conventions (see docs/data_format.md):

- a frame is an 8-bit grey PNG, read as a numpy array ``[H, W]`` (row, column);
- a label is a uint8 NIfTI whose array is stored ``[W, H, T]`` (x = column, y = row, one channel per task), the
  MONAI/ITK convention, so it overlays the PNG in ITK-SNAP or 3D Slicer; in memory it is ``[T, H, W]``.

Writers go through :func:`vfss_agglo_bundle.utils.io.atomic_path`.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image, UnidentifiedImageError
from vfss_agglo_bundle.utils.io import DataFormatError, PathLike, atomic_path

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")  # frame files read from user folders


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
    """Convert an RGB(A) or 16-bit/float image ``[H, W(, C)]`` to 8-bit grey ``[H, W]``: 8-bit colour by its
    luminance, 16-bit and float images stretched from their minimum to their maximum."""
    image = np.asarray(image)
    if image.ndim == 3:
        luminance = image[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        if image.dtype == np.uint8:  # 8-bit colour keeps its grey values (no stretch: frames stay comparable)
            return np.clip(np.round(luminance), 0, 255).astype(np.uint8)
        image = luminance
    if image.dtype == np.uint8:
        return image
    image = image.astype(np.float64)
    lo, hi = float(image.min()), float(image.max())
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return np.clip(np.round((image - lo) * scale), 0, 255).astype(np.uint8)


def write_frame(path: PathLike, image: np.ndarray, overwrite: bool = False, compress_level: int = 6) -> None:
    """Write a uint8 ``[H, W]`` frame as a grey PNG, atomically (``compress_level`` 1: ~4x faster, ~15% larger;
    PNG is lossless at every level)."""
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError(f"write_frame expects uint8 [H, W], got {image.dtype} {list(image.shape)} for {path}.")
    with atomic_path(path, overwrite=overwrite, suffix=".png") as tmp:
        Image.fromarray(image, mode="L").save(tmp, compress_level=compress_level)


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
    data = (label > 0).astype(np.uint8).transpose(2, 1, 0)  # Fortran-ordered [W, H, T]: NIfTI's order, no copy
    suffix = ".nii.gz" if str(path).endswith(".gz") else ".nii"
    with atomic_path(path, overwrite=overwrite, suffix=suffix) as tmp:
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp))
