"""Steady video: the streaming centred moving average against a hand computation, majority votes on flickering masks,
and steadying in `inferring`'s writer, `measure_folder` and `validate_split` (predictions only)."""

import csv
import json
import math

import numpy as np
import pytest
import torch
from conftest import ROOT
from ignite.engine import Engine
from vfss_agglo_bundle.data.formats import read_label, write_label
from vfss_agglo_bundle.handlers import InferenceWriter
from vfss_agglo_bundle.kinematics.folders import measure_folder
from vfss_agglo_bundle.kinematics.steadying import TemporalSmoother, steady_masks, steady_radius

SIDE = 16
SQUARE = (slice(4, 10), slice(5, 11))


def box_mean(frames: np.ndarray, radius: int) -> np.ndarray:
    """``[N, ...]`` -> the mean over a box of ``2 * radius + 1`` frames, cut at the ends (numpy convolution)."""
    box, centred = np.ones(2 * radius + 1), slice(radius, radius + len(frames))
    sums = np.apply_along_axis(lambda x: np.convolve(x, box)[centred], 0, frames)
    counts = np.convolve(np.ones(len(frames)), box)[centred]
    return sums / counts.reshape(-1, *[1] * (frames.ndim - 1))


def stream(smoother: TemporalSmoother, indices, frames) -> list[tuple[int, np.ndarray]]:
    out = []
    for index, frame in zip(indices, frames, strict=True):
        out += smoother.push(index, frame)
        assert len(smoother) <= 2 * smoother.radius + 1
    return out + smoother.flush()


@pytest.mark.parametrize("radius", [1, 2])
def test_the_smoother_is_a_box_mean_cut_at_the_ends(radius):
    frames = np.random.default_rng(radius).random((10, 2, 3, 4))
    out = stream(TemporalSmoother(radius), range(10), frames)
    assert [i for i, _ in out] == list(range(10))
    np.testing.assert_allclose(np.stack([m for _, m in out]), box_mean(frames, radius), rtol=1e-6)
    np.testing.assert_allclose(out[0][1], frames[: radius + 1].mean(0), rtol=1e-6)  # by hand: the first window
    np.testing.assert_allclose(out[5][1], frames[5 - radius : 6 + radius].mean(0), rtol=1e-6)


@pytest.mark.parametrize("radius", [1, 2, 3])
def test_streaming_gives_the_batch_result_whatever_the_frame_numbers_and_holds_at_most_a_window(radius):
    frames = np.random.default_rng(0).random((10, 3, 5, 5)).astype(np.float32)
    indices = [0, 1, 4, 5, 6, 9, 10, 11, 20, 30]  # gaps: the window counts frames as they come
    smoother = TemporalSmoother(radius)
    out = []
    for k, (index, frame) in enumerate(zip(indices, frames, strict=True)):
        given = smoother.push(index, frame)
        assert [i for i, _ in given] == ([indices[k - radius]] if k >= radius else [])  # delayed by radius frames
        assert len(smoother) <= 2 * radius + 1
        out += given
    out += smoother.flush()
    assert [i for i, _ in out] == indices and len(smoother) == 0
    np.testing.assert_allclose(np.stack([m for _, m in out]), box_mean(frames, radius), rtol=1e-6)
    again = stream(smoother, range(4), frames[:4])  # flushed: ready for the next study, from frame 0
    np.testing.assert_allclose(np.stack([m for _, m in again]), box_mean(frames[:4], radius), rtol=1e-6)


def test_frames_out_of_order_or_of_another_shape_are_refused():
    smoother = TemporalSmoother(2)
    smoother.push(3, np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="increasing order: frame 3 came after frame 3"):
        smoother.push(3, np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="increasing order: frame 1 came after frame 3"):
        smoother.push(1, np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="different sizes"):
        smoother.push(4, np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match="radius"):
        TemporalSmoother(-1)


def test_radius_zero_gives_each_frame_back_at_once():
    frames = np.random.default_rng(1).random((5, 2, 3, 3)).astype(np.float32)
    smoother = TemporalSmoother(0)
    for index, frame in enumerate(frames):
        ((given_index, given),) = smoother.push(index, frame)
        assert given_index == index and np.array_equal(given, frame) and len(smoother) == 0
    assert smoother.flush() == []


@pytest.mark.parametrize(
    "fps, seconds, radius",
    [(30, 0.15, 2), (7.67, 0.15, 1), (None, 0.15, 1), (math.nan, 0.15, 1), (30, 0, 0), (30, None, 0), (3.67, 0.15, 0),
     (60, 0.15, 4)],
)  # fmt: skip
def test_steady_radius(fps, seconds, radius):
    assert steady_radius(fps, seconds) == radius


def test_default_window_is_015_seconds():
    assert steady_radius(30) == 2 and steady_radius(7.67) == 1


def flickering_masks(frames: int = 10, gone: tuple = (3, 6), spurious: int = 8) -> np.ndarray:
    """``[N, 2, SIDE, SIDE]`` uint8: a square in channel 0 that vanishes in single frames, and in channel 1 a blob
    that shows in one frame only."""
    masks = np.zeros((frames, 2, SIDE, SIDE), np.uint8)
    masks[:, 0][:, SQUARE[0], SQUARE[1]] = 1
    masks[list(gone), 0] = 0
    masks[spurious, 1, 0:3, 0:3] = 1
    return masks


@pytest.mark.parametrize("radius", [1, 2])
def test_a_flickering_square_becomes_steady_by_majority_vote(radius):
    masks = flickering_masks()
    steady = np.stack(list(steady_masks(iter(masks), radius)))
    assert steady.dtype == np.uint8 and steady.shape == masks.shape
    expected = np.zeros_like(masks)
    expected[:, 0][:, SQUARE[0], SQUARE[1]] = 1  # the square in every frame, the one-frame blob in none
    np.testing.assert_array_equal(steady, expected)
    np.testing.assert_array_equal(np.stack(list(steady_masks(masks, 0))), masks)  # radius 0: as they were


def test_measure_folder_steadies_the_masks_unless_told_not_to(tmp_path):
    masks = flickering_masks()
    for t, frame in enumerate(masks):
        write_label(tmp_path / "masks" / "s1" / f"{t:04d}.nii.gz", frame)
    square = int(masks[0, 0].sum())
    steady = measure_folder(tmp_path / "masks", tmp_path / "on", 30.0, ["bolus", "pharynx"])["s1"]
    raw = measure_folder(tmp_path / "masks", tmp_path / "off", 30.0, ["bolus", "pharynx"], steady_seconds=0)["s1"]
    assert list(steady["frames"]["area_px_bolus"]) == [square] * 10
    assert list(raw["frames"]["area_px_bolus"]) == [0 if t in (3, 6) else square for t in range(10)]
    assert list(steady["frames"]["area_px_pharynx"]) == [0] * 10 and raw["frames"]["area_px_pharynx"][8] == 9


def test_validate_split_steadies_the_predictions_and_never_the_ground_truth(tmp_path):
    from vfss_agglo_bundle.data.datalist import load_datalist
    from vfss_agglo_bundle.kinematics.validation import _measure, compare, to_markdown, validate_split
    from vfss_agglo_bundle.phantom.dataset import synthesize_dataset
    from vfss_agglo_bundle.utils.io import read_json

    datalist = synthesize_dataset(
        tmp_path / "data", studies=3, frames=12, test_frames=None, image_size=64
    )  # 3.67 frames/s
    items = sorted(load_datalist(datalist, "test"), key=lambda it: int(it["frame"]))
    study, tasks = items[0]["study"], read_json(datalist)["tasks"]
    labels = [read_label(it["label"]) for it in items]
    predicted = [np.zeros_like(m) if t == 4 else m for t, m in enumerate(labels)]  # the model loses frame 4
    for t, mask in enumerate(predicted):
        write_label(tmp_path / "pred" / study / f"{int(items[t]['frame']):04d}.nii.gz", mask)
    truth = read_json(tmp_path / "data" / "kinematics" / f"{study}.json")
    report = validate_split(datalist, "test", tmp_path / "pred", steady_seconds=0.6)  # radius round(1.1) = 1
    row = report["studies"][study]
    assert row["labels"] == compare(_measure(labels, tasks, truth["fps"]), truth)  # as they are
    assert row["labels"] != compare(_measure(steady_masks(labels, 1), tasks, truth["fps"]), truth)  # not steadied
    steadied = list(steady_masks(predicted, 1))
    np.testing.assert_array_equal(steadied[4], (labels[3].astype(int) + labels[5] >= 2).astype(np.uint8))
    assert row["predicted"] == compare(_measure(steadied, tasks, truth["fps"]), truth)
    assert report["steady_seconds"] == 0.6 and "predicted masks steadied over 0.6 s" in to_markdown(report)
    off = validate_split(datalist, "test", tmp_path / "pred", steady_seconds=0)["studies"][study]
    assert off["labels"] == row["labels"]
    assert off["predicted"] == compare(_measure(predicted, tasks, truth["fps"]), truth) != row["predicted"]


def engine_output(flipped: int, studies: dict[str, int], fps: float, batch_size: int = 4) -> list[list[dict]]:
    """Batches of decollated items ``{"pred": [2, SIDE, SIDE] probabilities, "study", "frame", ...}``: channel 0 a
    square at 0.9 that the model loses (0.1) in frame ``flipped`` of each study, channel 1 at 0.2 everywhere but 0.8 in
    frame ``flipped``."""
    items = []
    for study, frames in studies.items():
        for t in range(frames):
            pred = torch.full((2, SIDE, SIDE), 0.2)
            pred[0] = 0.1
            pred[0][SQUARE] = 0.1 if t == flipped else 0.9
            pred[1] = 0.8 if t == flipped else 0.2
            items.append({"pred": pred, "study": study, "frame": t, "fps": fps, "image_path": "",
                          "image_box": torch.tensor([0, 0, SIDE, SIDE, 0, 0, 0]), "image_shape": (SIDE, SIDE),
                          "image_frame": torch.zeros(SIDE, SIDE, dtype=torch.uint8)})  # fmt: skip
    return [items[i : i + batch_size] for i in range(0, len(items), batch_size)]


@pytest.mark.parametrize("steady_seconds", [0.15, None, 0])
def test_the_inference_writer_restores_a_flipped_frame_when_steadying(tmp_path, steady_seconds):
    """Two studies of 7 and 6 frames at 30 frames/s (radius 2) in batches of 4 that straddle the studies."""
    studies = {"a": 7, "b": 6}
    writer = InferenceWriter(str(tmp_path), ["bolus", "pharynx"], overlays=True, video_format=None,
                             steady_seconds=steady_seconds)  # fmt: skip
    engine = Engine(lambda engine, batch: [{"pred": item["pred"]} for item in batch])
    writer.attach(engine)
    engine.run(engine_output(3, studies, 30.0))
    on = steady_seconds is not None and steady_seconds > 0
    for study, frames in studies.items():
        written = np.stack([read_label(tmp_path / "masks" / study / f"{t:04d}.nii.gz") for t in range(frames)])
        square = np.zeros((SIDE, SIDE), np.uint8)
        square[SQUARE] = 1
        expected = np.zeros_like(written)
        expected[:, 0] = square
        if not on:  # the flipped frame as the model gave it
            expected[3, 0], expected[3, 1] = 0, 1
        np.testing.assert_array_equal(written, expected)
        assert len(list((tmp_path / "overlays" / study).glob("*.png"))) == frames
        with open(tmp_path / "kinematics" / f"{study}.csv", newline="") as f:  # measured on the written masks
            areas = [int(float(row["area_px_bolus"])) for row in csv.DictReader(f)]
        assert areas == [int(m.sum()) for m in expected[:, 0]]


def test_inferring_steadies_probabilities_by_default_and_records_it():
    config = json.loads((ROOT / "configs/inference.json").read_text())
    (writer,) = [h for h in config["handlers"] if h["_target_"].endswith("InferenceWriter")]
    assert config["steady_seconds"] == 0.15 and writer["steady_seconds"] == "@steady_seconds"
    assert config["run_record"]["settings"]["steady_seconds"] == "@steady_seconds"
    assert [t["_target_"] for t in config["postprocessing"]["transforms"]] == ["Activationsd"]  # the writer thresholds
    assert "--steady_seconds 0 turns it off" in config["_desc_"]
