"""The realism check: frame statistics against values known by construction, and the prediction sheet."""

import numpy as np
import pytest
import torch
from PIL import Image
from vfss_agglo_bundle.networks.segmenter import VFSSSegmenter
from vfss_agglo_bundle.realism import compare, frame_statistics, prediction_sheet, read_frames


def test_statistics_of_a_frame_built_to_known_values():
    frame = np.zeros((200, 300), np.uint8)  # black shutters around a 100 x 150 exposed field
    frame[50:150, 75:225] = 100
    frame[50:100, 75:225] = 255  # half of the field saturated (air in front of the neck)
    stats = frame_statistics(frame)
    assert stats["field_coverage"] == pytest.approx(100 * 150 / (200 * 300))
    assert stats["exposed_fraction"] == pytest.approx(0.25)
    assert stats["saturated"] == pytest.approx(0.5)
    assert stats["p5"] == pytest.approx(100 / 255) and stats["p95"] == pytest.approx(1.0)
    assert sum(stats["histogram"]) == pytest.approx(1.0)
    flat = frame_statistics(np.full((64, 64), 120, np.uint8))
    assert flat["edge_density"] == 0.0 and flat["std"] == pytest.approx(0.0, abs=1e-6)


def test_compare_reads_colour_frames_and_tables_both(tmp_path):
    rgba = np.zeros((90, 120, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = 128, 255
    Image.fromarray(rgba).save(tmp_path / "real.png")
    frames = read_frames(tmp_path)
    assert frames[0][1].shape == (90, 120) and frames[0][1].dtype == np.uint8
    result = compare(frames, phantom_studies=1)
    assert result["phantom"]["frames"] == 24 and result["real"]["frames"] == 1
    assert result["real"]["mean"] == pytest.approx(128 / 255, abs=0.01)
    assert "| saturated |" in result["markdown"] and result["figure"].ndim == 3
    with pytest.raises(FileNotFoundError, match="neither an image file nor a folder"):
        read_frames(tmp_path / "missing")


def test_prediction_sheet_gives_masks_at_each_frame_size(tmp_path):
    torch.save(VFSSSegmenter("efficientvit_b0", num_classes=12, decoder_width=8).state_dict(), tmp_path / "m.pt")
    frames = [("wide", np.full((60, 100), 90, np.uint8)), ("tall", np.full((100, 60), 90, np.uint8))]
    sheet, found = prediction_sheet(frames, tmp_path / "m.pt", image_size=64, decoder_width=8)
    assert sheet.shape[1] == 2 * 384 and set(found) == {"wide", "tall"}
    assert all(0 <= area <= 6000 for areas in found.values() for area in areas.values())
