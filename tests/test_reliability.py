"""Killing `training` mid-stage and running it again ends where an uninterrupted run with the same seed ends."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vfss_agglo_bundle.data.io import save_torch, write_frame, write_json

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--phantom_studies", "3", "--phantom_frames", "4", "--image_size", "64", "--teacher_preset", "tiny",
        "--teachers", "['medsam']", "--distill_epochs", "1", "--seg_epochs", "4", "--val_interval", "1",
        "--distill_batch_size", "2", "--seg_batch_size", "2"]  # fmt: skip


def _command(root: Path) -> list[str]:
    return [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "configs/train.yaml",
            "--bundle_root", str(root), *TINY]  # fmt: skip


def _run(root: Path) -> None:
    subprocess.run(_command(root), cwd=ROOT, check=True, capture_output=True, timeout=900,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip


def _kill_after(root: Path, marker: Path) -> None:
    """Start `training`, SIGKILL it as soon as ``marker`` exists."""
    log = open(root.parent / f"{root.name}.log", "w")
    proc = subprocess.Popen(_command(root), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    deadline = time.time() + 600
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be interrupted"


@pytest.mark.slow
def test_a_run_killed_mid_stage2_finishes_like_an_uninterrupted_one(tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    _run(reference)
    _kill_after(killed, killed / "models/segmentation_resume.pt")  # after stage 2's first epoch
    assert not (killed / "models/segmentation.done.json").exists()
    _run(killed)
    ref = torch.load(reference / "models/model.pt", weights_only=True)
    out = torch.load(killed / "models/model.pt", weights_only=True)
    assert ref.keys() == out.keys() and all(torch.equal(ref[k], out[k]) for k in ref)
    ref_report = json.loads((reference / "eval/report.json").read_text())
    out_report = json.loads((killed / "eval/report.json").read_text())
    assert ref_report["rows"] == out_report["rows"]  # same seed, same CPU: identical metrics
    for stage in ("distillation", "segmentation"):  # byte-identical checkpoints (the fingerprints hold the paths)
        ref_done = json.loads((reference / f"models/{stage}.done.json").read_text())
        assert ref_done["outputs"] == json.loads((killed / f"models/{stage}.done.json").read_text())["outputs"]


@pytest.mark.parametrize(
    "failure",
    [OSError(errno.ENOSPC, "No space left on device"), PermissionError(errno.EACCES, "Permission denied")],
    ids=["disk-full", "read-only"],
)
def test_a_failed_write_keeps_what_was_written_before(tmp_path, monkeypatch, failure):
    """Reports, checkpoints and frames are replaced only by a complete new file: a failing write changes nothing."""
    write_json(tmp_path / "report.json", {"dice": 0.9})
    save_torch({"w": torch.ones(2)}, tmp_path / "model.pt")
    write_frame(tmp_path / "f.png", np.full((4, 4), 7, np.uint8))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def fail(*args, **kwargs):
        raise failure

    monkeypatch.setattr(Path, "write_text", fail)
    monkeypatch.setattr(Path, "write_bytes", fail)
    monkeypatch.setattr(Image.Image, "save", fail)
    with pytest.raises(OSError):
        write_json(tmp_path / "report.json", {"dice": 0.1}, overwrite=True)
    with pytest.raises(OSError):
        save_torch({"w": torch.zeros(2)}, tmp_path / "model.pt", overwrite=True)
    with pytest.raises(OSError):
        write_frame(tmp_path / "f.png", np.zeros((4, 4), np.uint8), overwrite=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # unchanged, and no temporary files


def test_an_unwritable_output_folder_is_named_in_the_error(tmp_path):
    (tmp_path / "eval").write_text("a file where a folder should be")
    with pytest.raises(OSError, match="eval"):
        write_json(tmp_path / "eval" / "report.json", {"dice": 0.9})
    assert (tmp_path / "eval").read_text() == "a file where a folder should be"
