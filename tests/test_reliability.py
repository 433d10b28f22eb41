"""Killing `training` at any stage and running it again ends where an uninterrupted run with the same seed ends;
a write that fails (disk full, read-only folder) keeps what was written before."""

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT
from PIL import Image
from vfss_agglo_bundle.data.formats import write_frame, write_label
from vfss_agglo_bundle.utils.io import save_torch, write_json

TINY = ["--phantom_studies", "3", "--phantom_frames", "4", "--phantom_test_frames", "4", "--image_size", "64",
        "--teacher_preset", "tiny", "--teachers", "['medsam']", "--distill_epochs", "2", "--seg_epochs", "4",
        "--val_interval", "1", "--distill_batch_size", "2", "--seg_batch_size", "2",
        "--distill_frames_per_study", "100"]  # fmt: skip

# Runs `python -m monai.bundle ...` with `target` (module:attribute) wrapped so that its `calls`-th call SIGKILLs the
# process before it runs: a kill at an exact point, with no clean-up, as `kill -9` or a lost machine would.
KILL_AT = """
import importlib, os, runpy, signal, sys
target, calls = sys.argv[1], int(sys.argv[2])
module, _, attribute = target.partition(":")
owner = importlib.import_module(module)
*parents, name = attribute.split(".")
for parent in parents:
    owner = getattr(owner, parent)
original, count = getattr(owner, name), [0]
def killing(*args, **kwargs):
    count[0] += 1
    if count[0] == calls:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(*args, **kwargs)
setattr(owner, name, killing)
sys.argv = ["monai.bundle", *sys.argv[3:]]
runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
"""

# stage: (function whose call is killed, which call, a file the interrupted stage had not written yet,
#         what the second run logs when it picks up the work done before the kill)
KILL_POINTS = {
    "data generation": ("vfss_agglo_bundle.phantom.dataset:write_frame", 6, "data/phantom/datalist.json",
                        "generating 3 phantom studies"),
    "teacher caching": ("vfss_agglo_bundle.teachers.store:TeacherFeatureStore._write", 3, "logs",
                        "teacher medsam: 2 views to compute"),
    "stage 1": ("vfss_agglo_bundle.engines.distill_trainer:DistillationTrainer._iteration", 3,
                "models/distillation.done.json", "distillation_resume.pt at epoch 1, iteration 2"),
    "stage 2, first epoch": ("monai.engines:SupervisedTrainer._iteration", 2, "models/segmentation_resume.pt",
                             "stage segmentation: running"),
    "stage 2": ("monai.engines:SupervisedTrainer._iteration", 5, "models/segmentation.done.json",
                "segmentation_resume.pt at epoch 2, iteration 4"),
    "evaluation": ("vfss_agglo_bundle.handlers.report:write_text", 1, "eval/report.csv", "kept the previous"),
}  # fmt: skip


def _run(root: Path, *prefix: str) -> subprocess.CompletedProcess:
    command = [sys.executable, *prefix, "run", "training", "--config_file", "configs/train.yaml",
               "--bundle_root", str(root), *TINY]  # fmt: skip
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("uninterrupted")
    result = _run(root, "-m", "monai.bundle")
    assert result.returncode == 0, result.stderr[-3000:]
    return root


def _files(root: Path, folder: str) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / folder).rglob("*")) if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("stage", list(KILL_POINTS))
def test_a_run_killed_at_any_stage_finishes_like_an_uninterrupted_one(reference, tmp_path, stage):
    target, calls, not_yet, picked_up = KILL_POINTS[stage]
    killed = tmp_path / "killed"
    result = _run(killed, "-c", KILL_AT, target, str(calls))
    assert result.returncode == -signal.SIGKILL, f"the run was not killed in {stage}:\n{result.stderr[-3000:]}"
    assert not (killed / not_yet).exists(), f"the kill came after {not_yet} was written"
    result = _run(killed, "-m", "monai.bundle")
    assert result.returncode == 0, result.stderr[-3000:]
    assert picked_up in result.stdout + result.stderr
    # same dataset, teacher features and checkpoints, byte for byte; the stage records (fingerprints and output
    # hashes) are identical too, and the test report has the same metrics
    for folder in ("data", "cache"):
        assert _files(killed, folder) == _files(reference, folder)
    assert _files(killed, "models") == _files(reference, "models")
    ref_report = json.loads((reference / "eval/report.json").read_text())
    assert json.loads((killed / "eval/report.json").read_text())["rows"] == ref_report["rows"]


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


def test_a_full_disk_while_writing_a_label_or_a_store_entry_keeps_the_old_file(tmp_path, monkeypatch):
    """The writers that are not plain bytes (NIfTI labels through nibabel, teacher-store entries through safetensors)
    fail half-way through a write on a full disk: the old file stays whole and no temporary file is left."""
    import nibabel as nib
    from vfss_agglo_bundle.teachers import store as store_module
    from vfss_agglo_bundle.teachers.registry import build_teacher

    write_label(tmp_path / "l.nii.gz", np.ones((2, 4, 4), np.uint8))
    teacher = build_teacher("hog", None, "tiny")
    entry_store = store_module.TeacherFeatureStore(tmp_path / "store", teacher)
    item = {"image": "x", "study": "s", "frame": 0}
    entry_store.fill([item], lambda it: torch.rand(1, 64, 64), progress=False)
    entry = entry_store.path("s/0000", 0)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    def half_then_full(*args, **kwargs):
        target = next(a for a in args if isinstance(a, (str, Path)) and "." in Path(a).name)
        Path(target).write_bytes(b"half a file")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(nib, "save", half_then_full)
    monkeypatch.setattr(store_module, "save_file", half_then_full)
    with pytest.raises(OSError, match="No space left"):
        write_label(tmp_path / "l.nii.gz", np.zeros((2, 4, 4), np.uint8), overwrite=True)
    entry.unlink()  # the entry must be recomputed, and the disk is full while it is written
    before.pop(entry)
    with pytest.raises(OSError, match="No space left"):
        entry_store.fill([item], lambda it: torch.rand(1, 64, 64), progress=False)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before  # no half file anywhere


def test_an_unwritable_output_folder_is_named_in_the_error(tmp_path):
    (tmp_path / "eval").write_text("a file where a folder should be")
    with pytest.raises(OSError, match="eval"):
        write_json(tmp_path / "eval" / "report.json", {"dice": 0.9})
    assert (tmp_path / "eval").read_text() == "a file where a folder should be"
