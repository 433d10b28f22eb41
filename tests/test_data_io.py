"""Frame/label I/O conventions, atomic writes, and image-label alignment through the whole loading path."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from vfss_agglo_bundle.data.datalist import build_datalist, load_datalist
from vfss_agglo_bundle.data.formats import read_frame, read_label, to_grey_uint8, write_frame, write_label
from vfss_agglo_bundle.data.transforms import LoadVFSSFramed
from vfss_agglo_bundle.utils.io import DataFormatError, write_json


def _asymmetric_case(h: int = 48, w: int = 80) -> tuple[np.ndarray, np.ndarray]:
    """A frame with an L-shaped bright blob near the top-right, and masks that trace it (plus a second channel)."""
    image = np.zeros((h, w), np.uint8)
    label = np.zeros((2, h, w), np.uint8)
    label[0, 4:20, 60:64] = 1  # vertical bar
    label[0, 16:20, 50:64] = 1  # foot of the L, pointing left
    label[1, 30:40, 5:12] = 1  # a block bottom-left
    image[label[0] > 0] = 250
    image[label[1] > 0] = 120
    return image, label


def test_label_is_stored_x_y_task_and_reads_back(tmp_path):
    image, label = _asymmetric_case()
    write_label(tmp_path / "l.nii.gz", label)
    stored = np.asarray(nib.load(str(tmp_path / "l.nii.gz")).dataobj)
    assert stored.shape == (80, 48, 2)  # [W, H, T]
    assert stored[61, 10, 0] == 1 and stored[10, 40, 0] == 0  # x=61 (column), y=10 (row)
    np.testing.assert_array_equal(read_label(tmp_path / "l.nii.gz"), label)


def test_image_and_label_stay_aligned_through_datalist_and_transforms(tmp_path):
    image, label = _asymmetric_case()
    write_frame(tmp_path / "images/s000/0000.png", image)
    write_label(tmp_path / "labels/s000/0000.nii.gz", label)
    item = {"image": "images/s000/0000.png", "label": "labels/s000/0000.nii.gz", "study": "s000", "frame": 0}
    write_json(tmp_path / "datalist.json", build_datalist([item], ["a", "b"], 48, (1, 0, 0)))
    (loaded,) = load_datalist(tmp_path / "datalist.json", "training", ["a", "b"])
    out = LoadVFSSFramed(image_size=48, num_tasks=2)({**loaded, "image": loaded["image"]})
    img, lab = out["image"], out["label"]
    assert img.shape == (1, 48, 48) and lab.shape == (2, 48, 48) and img.dtype == torch.float32
    assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0
    # the bright pixels of the image are channel 0 of the label (letterboxed 48 x 80 -> 80 x 80 -> 48 x 48, the
    # thin bars blurred by the antialiased resize; 0.6 is above channel 1's grey, 120/255)
    bright = img[0] > 0.6
    overlap = (bright & (lab[0] > 0)).sum() / (bright | (lab[0] > 0)).sum()
    assert overlap > 0.8
    # and it is in the top-right corner, not transposed or flipped
    rows, cols = torch.nonzero(lab[0], as_tuple=True)
    assert rows.float().mean() < 24 and cols.float().mean() > 24
    rows, cols = torch.nonzero(lab[1], as_tuple=True)
    assert rows.float().mean() > 24 and cols.float().mean() < 12


def test_loader_refuses_wrong_channel_count(tmp_path):
    image, label = _asymmetric_case()
    write_frame(tmp_path / "f.png", image)
    write_label(tmp_path / "l.nii.gz", label)
    with pytest.raises(ValueError, match=r"l\.nii\.gz has 2 channels but the config has 12 tasks"):
        LoadVFSSFramed(image_size=32, num_tasks=12)(
            {"image": str(tmp_path / "f.png"), "label": str(tmp_path / "l.nii.gz")}
        )


def test_writers_never_overwrite_and_leave_no_temp_files(tmp_path):
    image, label = _asymmetric_case()
    write_frame(tmp_path / "f.png", image)
    with pytest.raises(FileExistsError, match="f.png"):
        write_frame(tmp_path / "f.png", np.zeros_like(image))
    np.testing.assert_array_equal(read_frame(tmp_path / "f.png"), image)
    write_json(tmp_path / "d.json", {"a": 1})
    with pytest.raises(FileExistsError):
        write_json(tmp_path / "d.json", {"a": 2})
    assert json.loads((tmp_path / "d.json").read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.json", "f.png"]


def test_read_frame_rejects_colour_16bit_and_corrupt(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "rgb.png")
    Image.fromarray(np.zeros((8, 8), np.uint16)).save(tmp_path / "deep.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataFormatError, match=r"rgb\.png has PIL mode 'RGB'"):
        read_frame(tmp_path / "rgb.png")
    with pytest.raises(DataFormatError, match=r"deep\.png has PIL mode 'I;16'"):
        read_frame(tmp_path / "deep.png")
    with pytest.raises(DataFormatError, match=r"bad\.png cannot be read"):
        read_frame(tmp_path / "bad.png")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_frame(tmp_path / "missing.png")


def test_truncated_nifti_is_reported_by_name(tmp_path):
    write_label(tmp_path / "l.nii.gz", np.ones((3, 16, 16), np.uint8))
    data = (tmp_path / "l.nii.gz").read_bytes()
    (tmp_path / "t.nii.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFormatError, match=r"t\.nii\.gz cannot be read as NIfTI"):
        read_label(tmp_path / "t.nii.gz")


def test_to_grey_uint8_scales_16bit_and_rgb():
    deep = np.array([[0, 1000], [2000, 4000]], np.uint16)
    np.testing.assert_array_equal(to_grey_uint8(deep), [[0, 64], [128, 255]])
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = 255
    assert to_grey_uint8(rgb).dtype == np.uint8 and to_grey_uint8(rgb)[0, 0] == 255
    dim = np.full((2, 2, 4), 100, np.uint8)  # a dim 8-bit colour (RGBA) frame keeps its grey values: no stretch
    dim[1, 1, :3] = 110
    np.testing.assert_array_equal(to_grey_uint8(dim), [[100, 100], [100, 110]])


def test_monai_readers_see_png_and_nifti_in_the_same_orientation(tmp_path):
    """MONAI (and ITK viewers) index both files as (x, y): our label layout overlays the PNG there too."""
    from monai.transforms import LoadImage

    image, label = _asymmetric_case()
    write_frame(tmp_path / "f.png", image)
    write_label(tmp_path / "l.nii.gz", label)
    png = np.asarray(LoadImage(image_only=True)(str(tmp_path / "f.png")))
    nii = np.asarray(LoadImage(image_only=True)(str(tmp_path / "l.nii.gz")))
    assert png.shape == (80, 48) and nii.shape == (80, 48, 2)
    np.testing.assert_array_equal(png > 200, nii[..., 0] > 0)


def test_an_in_memory_frame_loads_like_its_png_and_is_kept_for_writers(tmp_path):
    frame = np.random.default_rng(3).integers(0, 256, (30, 50), dtype=np.uint8)
    write_frame(tmp_path / "f.png", frame)
    load = LoadVFSSFramed(keys=["image"], image_size=32)
    from_file, from_memory = load({"image": str(tmp_path / "f.png")}), load({"image": frame})
    assert torch.equal(from_file["image"], from_memory["image"]) and from_memory["image"].shape == (1, 32, 32)
    assert torch.equal(from_file["image_box"], from_memory["image_box"])
    assert np.array_equal(from_memory["image_frame"].numpy(), frame) and "image_frame" not in from_file
    with pytest.raises(ValueError, match=r"uint8 \[H, W\], got float32 \[30, 50\]"):
        load({"image": frame.astype(np.float32)})
