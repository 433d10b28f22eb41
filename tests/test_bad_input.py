"""Bad input given to the `training` and `evaluating` runs of a bundle folder that already holds a finished run.

Each case must stop with one error naming the file or config key, and leave every file already on disk
byte-identical: the dataset, the teacher feature store, the checkpoints, the stage records and the reports.
The only files a failed run may add are its run record and TensorBoard logs under ``logs/``; the bundle folder's
lock file (``.run.lock``, who runs now) is not a result and is left out.
"""

from __future__ import annotations

import errno
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT
from finished_bundle import SIZE, first_file, messages, phantom_datalist, run_bundle, tree
from PIL import Image
from vfss_agglo_bundle.data.formats import write_label
from vfss_agglo_bundle.networks.segmenter import VFSSSegmenter
from vfss_agglo_bundle.teachers.medsam import PRESETS as SAM_PRESETS


@pytest.fixture
def bundle(finished, tmp_path, monkeypatch) -> Path:
    """A copy of the finished bundle folder, run from the repository root as a user would."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return Path(shutil.copytree(finished, tmp_path / "bundle"))


def corrupt_png(root: Path) -> None:
    first_file(root, "image").write_bytes(b"\x89PNG\r\n\x1a\n not an image")


def truncated_nifti(root: Path) -> None:
    label = first_file(root, "label")
    label.write_bytes(label.read_bytes()[:200])


def wrong_channel_count(root: Path) -> None:
    write_label(first_file(root, "label"), np.zeros((2, SIZE, SIZE), np.uint8), overwrite=True)


def empty_datalist(root: Path) -> None:
    path, datalist = phantom_datalist(root)
    path.write_text(json.dumps({**datalist, "training": [], "validation": [], "test": []}))


def study_in_two_splits(root: Path) -> None:
    path, datalist = phantom_datalist(root)
    datalist["validation"].append(datalist["training"][0])
    path.write_text(json.dumps(datalist))


def frame_of_another_size(root: Path) -> None:
    Image.fromarray(np.zeros((SIZE // 2, SIZE // 2), np.uint8)).save(first_file(root, "image"))


def colour_frame(root: Path) -> None:
    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(first_file(root, "image"))


def sixteen_bit_frame(root: Path) -> None:
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint16)).save(first_file(root, "image"))


def missing_frame(root: Path) -> None:
    first_file(root, "image").unlink()


def store_of_another_signature(root: Path) -> None:
    (meta,) = (root / "cache").rglob("meta.json")
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "signature": "0" * 64}))


def teacher_checkpoint_of_another_architecture(root: Path) -> None:
    """A tiny SAM in the official MedSAM file name, where the full ViT-B one is expected."""
    from segment_anything.modeling import ImageEncoderViT

    (root / "weights").mkdir()
    encoder = ImageEncoderViT(**SAM_PRESETS["tiny"])
    state = {f"image_encoder.{k}": v for k, v in encoder.state_dict().items()}
    torch.save(state, root / "weights/medsam_vit_b.pth")


def segmenter_of_another_architecture(root: Path) -> None:
    torch.save(VFSSSegmenter("resnet18", num_classes=5).state_dict(), root / "models/model.pt")


def nothing(root: Path) -> None:
    pass


CASES: dict[str, tuple[Callable[[Path], None], dict, str]] = {
    # name: (what the user got wrong on disk, config overrides, regex the error must match)
    "corrupt PNG": (corrupt_png, {}, r"0000\.png cannot be read as an image"),
    "truncated NIfTI": (truncated_nifti, {}, r"0000\.nii\.gz cannot be read as NIfTI"),
    "label channels": (wrong_channel_count, {}, r"0000\.nii\.gz has 2 channels but there are 12 tasks"),
    "empty datalist": (empty_datalist, {}, r"datalist\.json: every split .* is empty"),
    "study in two splits": (study_in_two_splits, {}, r"study 's\d+' is in both 'training' and 'validation'"),
    "frame size": (
        frame_of_another_size,
        {},
        rf"0000\.png is 32x32 but the other frames of study '\w+' are {SIZE}x{SIZE}",
    ),
    "colour frame": (colour_frame, {}, r"0000\.png has PIL mode 'RGB'"),
    "16-bit frame": (sixteen_bit_frame, {}, r"0000\.png has PIL mode 'I;16'"),
    "missing frame": (missing_frame, {}, r"0000\.png"),
    "task list": (nothing, {"tasks": ["bolus", "tongue"]}, r"was built for tasks .*no task \['tongue'\]"),
    "store signature": (store_of_another_signature, {}, r"medsam-\w+ does not match teacher 'medsam' \(signature"),
    "teacher checkpoint": (
        teacher_checkpoint_of_another_architecture,
        {"teacher_preset": "full", "teacher_dir": "$@bundle_root + '/weights'"},
        r"medsam_vit_b\.pth",
    ),
    "unknown teacher": (nothing, {"teachers": ["medsam", "dinov9"]}, r"unknown teacher 'dinov9'; choose one of"),
    "unknown backbone": (nothing, {"student": "efficientvit_b9"}, r"unknown student backbone 'efficientvit_b9'"),
    "unknown balancing": (nothing, {"balancing": "softmax"}, r"unknown loss balancer 'softmax'; choose one of"),
    "other settings": (nothing, {"seg_epochs": 3}, r"stage 'segmentation' already finished .* different configuration"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_training_stops_with_a_clear_error_and_changes_nothing(bundle, case):
    break_it, overrides, message = CASES[case]
    break_it(bundle)
    before = tree(bundle)
    with pytest.raises(Exception) as err:
        run_bundle("training", bundle, **overrides)
    assert re.search(message, messages(err.value)), messages(err.value)
    after = tree(bundle)
    assert {k: after.get(k) for k in before} == before
    assert all(k.startswith("logs/") for k in set(after) - set(before)), sorted(set(after) - set(before))


def test_evaluating_a_checkpoint_of_another_architecture_names_it(bundle):
    segmenter_of_another_architecture(bundle)
    before = tree(bundle)
    with pytest.raises(Exception) as err:
        run_bundle("evaluating", bundle, config="configs/evaluate.yaml")
    assert "model.pt does not match VFSSSegmenter(backbone='efficientvit_b0', num_classes=12" in messages(err.value)
    assert "looks like backbone='resnet18' with 5 classes" in messages(err.value)
    after = tree(bundle)
    assert {k: after.get(k) for k in before} == before


@pytest.mark.parametrize(
    "failure",
    [OSError(errno.ENOSPC, "No space left on device"), PermissionError(errno.EACCES, "Permission denied")],
    ids=["disk-full", "read-only"],
)
def test_a_report_that_cannot_be_written_keeps_the_previous_one(bundle, monkeypatch, failure):
    """The stages are done, the test report is written again, and every write under eval/ fails."""
    eval_dir = bundle / "eval"
    originals = {"write_text": Path.write_text, "write_bytes": Path.write_bytes, "save": Image.Image.save}

    def failing(name: str) -> Callable:
        def write(target, *args, **kwargs):
            path = Path(args[0]) if name == "save" else target
            if eval_dir in path.parents:
                raise failure
            return originals[name](target, *args, **kwargs)

        return write

    for name, owner in (("write_text", Path), ("write_bytes", Path), ("save", Image.Image)):
        monkeypatch.setattr(owner, name, failing(name))
    before = tree(bundle)
    with pytest.raises(Exception) as err:  # MONAI raises a RuntimeError from our OSError
        run_bundle("training", bundle)
    assert f"could not write {eval_dir / 'report.json'} ({failure.strerror})" in messages(err.value)
    after = tree(bundle)
    assert {k: after.get(k) for k in before} == before
    assert all(k.startswith("logs/") for k in set(after) - set(before))  # the run record, no temporary files
