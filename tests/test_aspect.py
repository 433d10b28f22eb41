"""Aspect-true preprocessing: non-square frames are letterboxed (optionally cropped to the exposed field) into the
square model input, and masks come back on the original frame where the object is."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import ROOT
from PIL import Image
from vfss_agglo_bundle.data.formats import read_label
from vfss_agglo_bundle.data.transforms import LoadVFSSFramed, exposed_field, frame_box, restore_masks, to_model_input
from vfss_agglo_bundle.data.video import write_video
from vfss_agglo_bundle.networks.segmenter import VFSSSegmenter


def frame_with_disc(height: int, width: int, centre: tuple, radius: float, border: int = 0) -> np.ndarray:
    """uint8 frame: black border of ``border`` px, grey exposed field, a bright disc (the known object)."""
    rows, cols = np.mgrid[0:height, 0:width]
    frame = np.zeros((height, width), np.uint8)
    frame[border : height - border, border : width - border] = 90
    frame[(rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2] = 230
    return frame


def disc_mask(frame: np.ndarray) -> np.ndarray:
    return frame > 200


def roundness(mask: np.ndarray) -> float:
    """Height / width of a mask's bounding box (1 for a disc that was not squashed)."""
    rows, cols = np.nonzero(mask)
    return (rows.max() - rows.min() + 1) / (cols.max() - cols.min() + 1)


@pytest.mark.parametrize("shape", [(240, 320), (180, 320), (320, 240)])  # 4:3, 16:9, portrait
def test_letterbox_keeps_proportions_and_maps_back_exactly(shape):
    frame = frame_with_disc(*shape, centre=(shape[0] * 0.4, shape[1] * 0.6), radius=30)
    box = frame_box(frame.shape)
    image = to_model_input(torch.from_numpy(frame).float()[None] / 255, box, 128)
    assert image.shape == (1, 128, 128)
    assert abs(roundness(image[0].numpy() > 200 / 255) - 1) < 0.1  # the disc is still round in the input
    stretched = to_model_input(
        torch.from_numpy(frame).float()[None] / 255, frame_box(frame.shape, None, "stretch"), 128
    )
    assert abs(roundness(stretched[0].numpy() > 200 / 255) - shape[1] / shape[0]) < 0.15  # squashed
    pred = (image > 200 / 255).float()  # an oracle segmenter in model space
    back = restore_masks(pred, box, frame.shape)[0].numpy() > 0.5
    truth = disc_mask(frame)
    dice = 2 * (back & truth).sum() / (back.sum() + truth.sum())
    assert back.shape == shape and dice > 0.95


def test_exposed_field_finds_the_shutters_and_the_crop_maps_back():
    frame = frame_with_disc(240, 320, centre=(120, 200), radius=25, border=40)
    assert exposed_field(frame.astype(np.float32) / 255) == (40, 40, 160, 240)
    box = frame_box(frame.shape, exposed_field(frame.astype(np.float32) / 255))
    image = to_model_input(torch.from_numpy(frame).float()[None] / 255, box, 128)
    assert float(image[0, 64, 2]) > 0.2  # the field fills the input's width: no black border left at the side
    back = restore_masks((image > 200 / 255).float(), box, frame.shape)[0].numpy() > 0.5
    truth = disc_mask(frame)
    assert 2 * (back & truth).sum() / (back.sum() + truth.sum()) > 0.95
    assert not back[:40].any() and not back[:, :40].any()  # nothing outside the field


def test_square_frames_are_unchanged_by_letterboxing(tmp_path):
    frame = np.random.default_rng(0).integers(0, 255, (96, 96), dtype=np.uint8)
    Image.fromarray(frame).save(tmp_path / "f.png")
    a = LoadVFSSFramed(keys=("image",), image_size=64)({"image": str(tmp_path / "f.png")})["image"]
    b = LoadVFSSFramed(keys=("image",), image_size=64, aspect="stretch")({"image": str(tmp_path / "f.png")})["image"]
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="aspect must be one of"):
        LoadVFSSFramed(keys=("image",), aspect="squash")


class DiscSegmenter(VFSSSegmenter):
    """A segmenter whose every channel is 'bright pixel' (an oracle for where the known object is)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x > 200 / 255).float() * 20 - 10).repeat(1, self.num_classes, 1, 1) + 0 * super().forward(x).sum()


@pytest.mark.parametrize("size", [(240, 320), (176, 320)])  # 4:3 and 16:9 videos (even sides for H.264)
def test_inferring_a_non_square_video_gives_masks_on_the_object(tmp_path, size):
    from monai.bundle import run as bundle_run

    height, width = size
    frames = np.stack([frame_with_disc(height, width, (height / 2, width * (0.3 + 0.1 * t)), 24) for t in range(3)])
    video = tmp_path / "clip.mp4"
    write_video(video, frames, fps=10)
    (tmp_path / "models").mkdir()
    network = {"_target_": "test_aspect.DiscSegmenter", "backbone": "efficientvit_b0", "num_classes": 12,
               "decoder_width": 8}  # fmt: skip
    torch.save(VFSSSegmenter("efficientvit_b0", num_classes=12, decoder_width=8).state_dict(),
               tmp_path / "models/model.pt")  # fmt: skip
    # steady_seconds 0: the disc moves 32 px a frame, each frame's masks are checked on their own
    bundle_run("inferring", config_file=str(ROOT / "configs/inference.json"), bundle_root=str(tmp_path),
               input=str(video), output_dir=str(tmp_path / "out"), image_size=128, network_def=network,
               video_format=None, steady_seconds=0)  # fmt: skip
    for t in range(3):
        path = tmp_path / f"out/masks/clip/{t:04d}.nii.gz"
        assert nib.load(str(path)).shape[:2] == (width, height)  # [W, H, T]: the video's own size
        mask = read_label(path)[0] > 0
        truth = disc_mask(frames[t])
        assert 2 * (mask & truth).sum() / (mask.sum() + truth.sum()) > 0.9, t
    record = json.loads(next((tmp_path / "out").glob("inferring-*.json")).read_text())
    assert record["settings"]["aspect"] == "letterbox" and record["settings"]["steady_seconds"] == 0
