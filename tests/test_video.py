"""Videos as they come: even and variable frame rates, truncated, corrupt, empty and foreign files, read one frame at
a time; and the overlay video written as the frames come, in bounded memory.

Test clips are written with PyAV (FFmpeg's H.264 encoder, the real containers); each frame shows a bright square
whose column gives the frame's number, so a decoded frame is identified by where its square is.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
from fractions import Fraction
from pathlib import Path

import av
import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import ROOT
from PIL import Image
from vfss_agglo_bundle.data.formats import read_label
from vfss_agglo_bundle.data.video import SequentialVideo, probe_video, read_video
from vfss_agglo_bundle.handlers import inference_writer
from vfss_agglo_bundle.handlers.inference_writer import OverlayVideo
from vfss_agglo_bundle.networks.segmenter import VFSSSegmenter
from vfss_agglo_bundle.utils.io import DataFormatError

HEIGHT, WIDTH = 96, 160


def square_frame(index: int) -> np.ndarray:
    """A grey frame with a 12x12 white square whose left edge is at column 4 + 4 * index (index < 36)."""
    frame = np.full((HEIGHT, WIDTH), 60, np.uint8)
    frame[40:52, 4 + 4 * index : 16 + 4 * index] = 255
    return frame


def frame_number(frame: np.ndarray) -> int:
    """The number :func:`square_frame` drew into a decoded frame."""
    columns = np.flatnonzero((frame[40:52] > 160).mean(0) > 0.5)
    return int(round((columns.mean() - 9.5) / 4))


def write_clip(
    path: Path, times: list[float] | None = None, frames: int = 30, fps: int = 25, intra: bool = False
) -> Path:
    """An H.264 clip of square frames, at an even ``fps`` or at the presentation ``times`` (seconds) given
    (``intra``: every frame a key frame, so that a damaged frame damages no other)."""
    base = Fraction(1, 1000) if times is not None else Fraction(1, fps)
    ticks = [round(t * 1000) for t in times] if times is not None else range(frames)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        if intra:
            stream.gop_size = 1
        stream.time_base = stream.codec_context.time_base = base
        for i, tick in enumerate(ticks):
            frame = av.VideoFrame.from_ndarray(np.repeat(square_frame(i)[..., None], 3, -1), format="rgb24")
            frame.pts, frame.time_base = tick, base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def _half(path: Path) -> bytes:
    """The first half of a file: an MP4 without its index (written last)."""
    return path.read_bytes()[: path.stat().st_size // 2]


def corrupt_packet(path: Path, out: Path, which: int) -> Path:
    """A copy of ``path`` with the payload of its ``which``-th video packet overwritten with noise."""
    with av.open(str(path)) as container:
        packets = [(p.pos, p.size) for p in container.demux(video=0) if p.size]
    data = bytearray(path.read_bytes())
    pos, size = packets[which]
    data[pos + 8 : pos + size - 2] = np.random.default_rng(1).integers(0, 256, size - 10, dtype=np.uint8).tobytes()
    out.write_bytes(bytes(data))
    return out


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".avi"])
def test_an_even_rate_video_is_read_frame_by_frame_as_written(tmp_path, suffix):
    clip = write_clip(tmp_path / f"clip{suffix}")
    info = probe_video(clip)
    assert (info.frames, info.decoded, info.width, info.height) == (30, 30, WIDTH, HEIGHT)
    assert info.fps == pytest.approx(25.0) and (info.repeated, info.dropped, info.skipped) == (0, 0, 0)
    frames = list(read_video(clip, info))
    assert [frame_number(f) for f in frames] == list(range(30))
    assert max(np.abs(f.astype(int) - square_frame(i)).mean() for i, f in enumerate(frames)) < 3  # lossy, grey kept


def test_a_variable_frame_rate_is_resampled_to_the_nearest_frame_on_an_even_grid(tmp_path, caplog):
    # 25 frames/s with a 4-interval gap (3 frames lost), then a burst at 100 frames/s (2 frames too many)
    times = [i * 0.04 for i in range(10)] + [0.52 + i * 0.04 for i in range(10)] + [0.92, 0.93, 0.94, 0.96]
    times += [0.96 + 0.04 * i for i in range(1, 7)]
    clip = write_clip(tmp_path / "vfr.mkv", times=times)
    with caplog.at_level(logging.WARNING):
        info = probe_video(clip)
    grid = np.arange(0, times[-1] + 1e-9, 0.04)
    nearest = [int(np.argmin([abs(t - g) + 1e-9 * j for j, t in enumerate(times)])) for g in grid]  # ties: earlier
    assert info.fps == pytest.approx(25.0) and list(info.shown) == nearest
    assert info.repeated == sum(max(nearest.count(j) - 1, 0) for j in set(nearest)) == 3
    assert info.dropped == len(times) - len(set(nearest)) == 2
    assert "variable frame rate" in caplog.text and "3 repeated, 2 dropped" in caplog.text
    assert [frame_number(f) for f in read_video(clip, info)] == nearest
    given = probe_video(clip, fps=30.0)  # a rate the user gives: frames as they are, at that rate
    assert given.fps == 30.0 and list(given.shown) == list(range(len(times)))


def test_a_truncated_video_gives_the_frames_before_the_cut(tmp_path, caplog):
    whole = write_clip(tmp_path / "whole.mkv")
    with av.open(str(whole)) as container:
        at = [p.pos for p in container.demux(video=0) if p.size][25]  # cut inside the 26th frame's packet
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(whole.read_bytes()[: at + 4])
    with caplog.at_level(logging.WARNING):
        info = probe_video(cut)
    assert 5 < info.frames < 30 and info.ended_early
    assert [frame_number(f) for f in read_video(cut, info)] == list(range(info.frames))
    assert f"video {cut} may be truncated or corrupt: {info.frames} frame(s) decoded" in caplog.text


def test_a_corrupt_frame_is_skipped_and_its_time_kept(tmp_path, caplog):
    clip = corrupt_packet(write_clip(tmp_path / "clip.mkv", intra=True), tmp_path / "corrupt.mkv", which=20)
    with caplog.at_level(logging.WARNING):
        info = probe_video(clip)
    numbers = [frame_number(f) for f in read_video(clip, info)]
    assert info.skipped >= 1 and info.frames == 30 and info.decoded < 30  # the lost frame's time is filled
    # frame 20 lost, a neighbour shown twice in its place: every other frame once, in order
    assert numbers[:20] == list(range(20)) and numbers[21:] == list(range(21, 30)) and numbers[20] in (19, 21)
    assert f"{info.skipped} packet(s) failed" in caplog.text


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(b""), "is empty (0 bytes)"),
        (lambda p: p.write_bytes(np.random.default_rng(0).bytes(5000)), "cannot be opened as a video"),
        (lambda p: p.write_bytes(_half(write_clip(p.with_name("w.mp4")))), "cannot be opened as a video"),
        (lambda p: p.write_text("frame,structure,x,y\n0,hyoid,1,2\n"), "cannot be opened as a video"),
    ],
    ids=["zero-length", "not-a-video", "mp4-without-its-end", "a-text-file"],
)
def test_an_unreadable_video_gives_one_error_naming_it(tmp_path, make, message):
    path = tmp_path / "study.mp4"
    make(path)
    with pytest.raises(DataFormatError, match=rf"video {re.escape(str(path))} .*{re.escape(message)}"):
        probe_video(path)


def test_frames_read_in_any_order_are_the_same_and_a_video_pickles_unopened(tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", frames=12)
    video = SequentialVideo(clip, probe_video(clip))
    assert [frame_number(video[i]) for i in (0, 1, 5, 2, 11, 11, 3)] == [0, 1, 5, 2, 11, 11, 3]
    copy = pickle.loads(pickle.dumps(video))
    assert copy._frames is None and frame_number(copy[7]) == 7
    with pytest.raises(IndexError):
        video[12]
    unprobed = SequentialVideo(clip)  # as CVAT numbers frames: every decoded frame, no length up front
    with pytest.raises(DataFormatError, match=r"has 12 frames that decode; frame 12 was asked for"):
        unprobed[12]


def test_a_long_study_gif_keeps_every_stride_th_frame_scaled_down(tmp_path, monkeypatch):
    monkeypatch.setattr(inference_writer, "GIF_FRAMES", 6)
    monkeypatch.setattr(inference_writer, "GIF_WIDTH", 80)
    video = OverlayVideo(tmp_path / "s.gif", ["bolus"], fps=20.0, video_format="gif")
    for i in range(30):
        video.add(np.repeat(square_frame(i)[..., None], 3, -1))
    video.close()
    with Image.open(tmp_path / "s.gif") as gif:
        frames = []
        for k in range(gif.n_frames):
            gif.seek(k)
            frames.append(np.asarray(gif.convert("L")))
            assert gif.info["duration"] == pytest.approx(1000 * 8 / 20.0)
    # 0..5 kept, halved to 0, 2, 4 (stride 2) at 6 frames, to 0, 4, 8 (stride 4) at 6 again, to 0, 8, 16 (stride
    # 8) at 6 again, then 24: every 8th frame, 80 px wide, in 256 colours
    assert video.stride == 8 and frames[0].shape[1] == 80
    picture = [np.asarray(Image.fromarray(f[: HEIGHT // 2]).resize((WIDTH, HEIGHT), Image.NEAREST)) for f in frames]
    assert [frame_number(p) for p in picture] == list(range(0, 30, 8))


def test_an_mp4_overlay_video_gets_every_frame(tmp_path):
    video = OverlayVideo(tmp_path / "s.mp4", ["bolus"], fps=25.0, video_format="mp4")
    for i in range(30):
        video.add(np.repeat(square_frame(i)[..., None], 3, -1))
    assert not (tmp_path / "s.mp4").exists()  # appears when complete
    video.close()
    info = probe_video(tmp_path / "s.mp4")
    assert info.frames == 30 and info.fps == pytest.approx(25.0)
    assert [frame_number(f[:HEIGHT]) for f in read_video(tmp_path / "s.mp4")] == list(range(30))


class SquareSegmenter(VFSSSegmenter):
    """Every channel is 'bright pixel': an oracle for where the square is."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x > 200 / 255).float() * 20 - 10).repeat(1, self.num_classes, 1, 1) + 0 * super().forward(x).sum()


def _infer(root: Path, video: Path, **overrides) -> Path:
    from monai.bundle import run as bundle_run

    if not (root / "models/model.pt").exists():
        (root / "models").mkdir(parents=True)
        torch.save(VFSSSegmenter("efficientvit_b0", num_classes=12, decoder_width=8).state_dict(),
                   root / "models/model.pt")  # fmt: skip
    network = {"_target_": "test_video.SquareSegmenter", "backbone": "efficientvit_b0", "num_classes": 12,
               "decoder_width": 8}  # fmt: skip
    out = root / "out"
    bundle_run("inferring", config_file=str(ROOT / "configs/inference.json"), bundle_root=str(root),
               input=str(video), output_dir=str(out), image_size=160, network_def=network, steady_seconds=0,
               **overrides)  # fmt: skip
    return out


VARIABLE = [i * 0.04 for i in range(8)] + [0.44 + i * 0.04 for i in range(8)]  # one 3-frame gap: 19 frames at 25/s


@pytest.mark.parametrize(
    "make, frames, numbers",
    [
        (lambda p: write_clip(p, frames=16), 16, list(range(16))),
        (lambda p: write_clip(p, times=VARIABLE), 19, list(range(8)) + [7, 7, 8] + list(range(8, 16))),
        (
            lambda p: corrupt_packet(write_clip(p.with_name("w.mkv"), frames=16, intra=True), p, which=8),
            16,
            list(range(8)) + [7] + list(range(9, 16)),
        ),
    ],
    ids=["even-rate", "variable-rate", "corrupt-frame"],
)
def test_inferring_a_video_writes_a_mask_for_every_frame_in_time(tmp_path, make, frames, numbers):
    video = make(tmp_path / "clip.mkv")
    out = _infer(tmp_path, video)
    masks = sorted((out / "masks/clip").glob("*.nii.gz"))
    assert len(masks) == frames and nib.load(str(masks[0])).shape[:2] == (WIDTH, HEIGHT)
    found = [frame_number(read_label(m)[0] * 255) for m in masks]
    assert found == numbers
    kinematics = json.loads((out / "kinematics/clip.json").read_text())
    assert kinematics["num_frames"] == frames and kinematics["fps"] == pytest.approx(25.0)
    with Image.open(out / "videos/clip.gif") as gif:  # repeated frames are merged, their durations added
        durations = []
        for k in range(gif.n_frames):
            gif.seek(k)
            durations.append(gif.info["duration"])
    assert sum(durations) == pytest.approx(frames * 40, abs=len(durations))


@pytest.mark.parametrize("case", ["zero-length", "truncated-mp4"])
def test_inferring_an_unreadable_video_names_it_and_writes_nothing(tmp_path, case):
    video = tmp_path / "clip.mp4"
    if case == "zero-length":
        video.write_bytes(b"")
    else:
        video.write_bytes(_half(write_clip(tmp_path / "whole.mp4")))
    with pytest.raises(Exception) as err:
        _infer(tmp_path, video)
    text = repr(err.value) + repr(err.value.__cause__)
    assert f"video {video}" in text
    assert not (tmp_path / "out/masks").exists() and not (tmp_path / "out/videos").exists()


def _anonymous_mb() -> float:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("RssAnon"))
    return int(line.split()[1]) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the resident memory from /proc")
def test_free_heap_pages_go_back_to_the_system():
    from vfss_agglo_bundle.utils.memory import release_free_memory

    blocks = [np.ones(64 << 10, np.uint8) for _ in range(2000)]  # 125 MB of 64 KB heap blocks, touched
    del blocks[::2]  # 62.5 MB freed between live blocks: the heap cannot shrink from its top
    before = _anonymous_mb()
    assert release_free_memory()
    assert before - _anonymous_mb() > 50
    assert len(blocks) == 1000 and all(int(b[-1]) == 1 for b in blocks)  # the live blocks are untouched


def test_inferring_gives_free_memory_back_every_few_batches(monkeypatch):
    from ignite.engine import Engine
    from vfss_agglo_bundle.handlers import ReleaseMemory
    from vfss_agglo_bundle.handlers import memory as handler_module

    calls = []
    monkeypatch.setattr(handler_module, "release_free_memory", lambda: calls.append(1) or True)
    engine = Engine(lambda engine, batch: None)
    ReleaseMemory(every=8).attach(engine)
    engine.run(range(20), max_epochs=1)
    assert len(calls) == 2  # after batches 8 and 16
    with pytest.raises(ValueError, match="every must be >= 1"):
        ReleaseMemory(every=0)
