"""The `training`, `evaluating` and `inferring` runs through the real config files, as a user runs them."""

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import ROOT
from PIL import Image
from vfss_agglo_bundle.data.video import write_video
from vfss_agglo_bundle.networks.segmenter import VFSSSegmenter
from vfss_agglo_bundle.utils.io import file_sha256

TINY = [
    "--phantom_studies",
    "4",
    "--phantom_frames",
    "3",
    "--phantom_test_frames",
    "3",
    "--distill_frames_per_study",
    "100",
    "--image_size",
    "64",
    "--teacher_preset",
    "tiny",
    "--teachers",
    "['medsam','rad_dino','medclip']",
    "--distill_epochs",
    "2",
    "--seg_epochs",
    "2",
    "--val_interval",
    "1",
    "--distill_batch_size",
    "2",
    "--seg_batch_size",
    "2",
]


def bundle(run_id: str, config: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m monai.bundle run <run_id> --config_file <config> ...` from the bundle root."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", config, *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    result = bundle("training", "configs/train.yaml", "--bundle_root", str(root), *TINY)
    return root, result.stdout + result.stderr


@pytest.mark.slow
def test_training_runs_every_stage_and_writes_outputs(trained):
    root, log = trained
    datalist = json.loads((root / "data/phantom/datalist.json").read_text())
    assert len(datalist["tasks"]) == 12 and datalist["training"] and datalist["test"]
    assert sorted(p.name.split("-")[0] for p in (root / "cache/teachers").iterdir()) == [
        "medclip",
        "medsam",
        "rad_dino",
    ]
    for stage in ("distillation", "segmentation"):
        record = json.loads((root / f"models/{stage}.done.json").read_text())
        for name, digest in record["outputs"].items():
            assert file_sha256(root / "models" / name) == digest
    net = VFSSSegmenter("efficientvit_b0", num_classes=12)
    net.load_state_dict(torch.load(root / "models/model.pt", map_location="cpu", weights_only=True))
    encoder = torch.load(root / "models/student_encoder.pt", map_location="cpu", weights_only=True)
    assert set(encoder) == set(net.encoder.state_dict())
    report = json.loads((root / "eval/report.json").read_text())
    assert [r["task"] for r in report["rows"]] == datalist["tasks"] + ["mean"]
    mean = report["rows"][-1]
    assert 0.0 <= mean["dice"] <= 1.0 and mean["hd95"] >= 0.0
    assert mean["dice"] == pytest.approx(np.mean([r["dice"] for r in report["rows"][:-1]]))
    assert report["num_frames"] == len(datalist["test"])
    assert (root / "eval/overlays/mandible_best.png").exists() and (root / "eval/report.md").read_text().count("|") > 50
    assert "stage distillation: running" in log and "loss_medsam" in log
    (record_path,) = (root / "logs").glob("training-*.json")
    record = json.loads(record_path.read_text())
    assert record["settings"]["seed"] == 0 and set(record["settings"]["teacher_signatures"]) == {
        "medsam",
        "rad_dino",
        "medclip",
    }
    assert (
        record["packages"]["torch"]
        and "configs/train.yaml" in record["config_files"]
        and "--bundle_root" in record["command"]
    )
    # each stage's resolved settings, readable, and the fingerprint its completion record holds
    stage1, stage2 = record["stages"]["distillation"]["settings"], record["stages"]["segmentation"]["settings"]
    assert stage1["trainer"]["state"]["max_epochs"] == 2
    assert stage1["trainer"]["balancer"]["class"].endswith("AttentionBalancer")
    assert stage1["trainer"]["balancer"]["teacher_names"] == ["medsam", "rad_dino", "medclip"]
    assert stage2["trainer"]["network"]["num_classes"] == 12 and stage2["validation"]["key_metric"]
    assert stage2["validation"]["key_metric"]["val_mean_dice"]["tasks"] == datalist["tasks"]
    assert stage2["after"] == {"distillation": record["stages"]["distillation"]["fingerprint"]}
    for stage in ("distillation", "segmentation"):
        done = json.loads((root / f"models/{stage}.done.json").read_text())
        assert done["fingerprint"] == record["stages"][stage]["fingerprint"]
        assert done["settings"] == record["stages"][stage]["settings"]


@pytest.mark.slow
def test_training_again_skips_finished_stages_and_keeps_outputs(trained):
    root, _ = trained
    before = file_sha256(root / "models/model.pt")
    log = bundle("training", "configs/train.yaml", "--bundle_root", str(root), *TINY)
    text = log.stdout + log.stderr
    assert "skipping phantom generation" in text
    assert "stage distillation: outputs found" in text and "stage segmentation: outputs found" in text
    assert file_sha256(root / "models/model.pt") == before


@pytest.mark.slow
def test_evaluating_writes_a_report_and_keeps_the_previous_one(trained):
    root, _ = trained
    bundle(
        "evaluating",
        "configs/evaluate.yaml",
        "--bundle_root",
        str(root),
        "--image_size",
        "64",
        "--eval_split",
        "validation",
    )
    report = json.loads((root / "eval/report.json").read_text())
    datalist = json.loads((root / "data/phantom/datalist.json").read_text())
    assert report["num_frames"] == len(datalist["validation"])
    assert len(list((root / "eval").glob("report.*.json"))) >= 1  # the earlier test-split report was kept
    assert len(list((root / "logs").glob("evaluating-*.json"))) == 1


@pytest.mark.slow
def test_inferring_writes_masks_overlays_and_a_video_per_study(trained, tmp_path):
    root, _ = trained
    frames = tmp_path / "frames"
    (frames / "studyA").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (80, 96), dtype=np.uint8)).save(
            frames / f"studyA/{i}.png"
        )
    out = tmp_path / "out"
    args = ["--bundle_root", str(root), "--image_size", "64", "--input", str(frames), "--output_dir", str(out)]
    result = bundle("inferring", "configs/inference.json", *args)
    masks = sorted((out / "masks/studyA").glob("*.nii.gz"))
    assert len(masks) == 3 and nib.load(str(masks[0])).shape == (96, 80, 12)  # [W, H, T] at the frame's own size
    assert len(list((out / "overlays/studyA").glob("*.png"))) == 3
    assert (out / "videos/studyA.gif").stat().st_size > 0
    (record,) = out.glob("inferring-*.json")  # which model made these masks, from which input
    record = json.loads(record.read_text())
    assert record["files"]["model"]["sha256"] == file_sha256(root / "models/model.pt")
    assert record["settings"]["input"] == str(frames)
    kinematics = json.loads((out / "kinematics/studyA.json").read_text())  # a frame folder has no frame rate
    assert kinematics["fps"] is None and kinematics["units"]["time"] == "frames"
    assert len((out / "kinematics/studyA.csv").read_text().splitlines()) == 1 + 3
    assert "no frame rate" in result.stdout + result.stderr  # and the warning says to pass --fps
    again = bundle("inferring", "configs/inference.json", *args, check=False)
    assert (
        again.returncode != 0 and "already holds the outputs of an earlier run" in again.stderr
    )  # earlier outputs are never replaced


def test_inferring_a_video_takes_its_frame_rate_from_the_metadata(trained, tmp_path):
    root, _ = trained
    video = tmp_path / "swallow.mp4"
    frames = np.random.default_rng(0).integers(0, 255, (6, 80, 96), dtype=np.uint8)  # 16-px blocks for H.264
    write_video(video, frames, fps=15)
    out = tmp_path / "out"
    args = ["--bundle_root", str(root), "--image_size", "64", "--input", str(video), "--output_dir", str(out)]
    bundle("inferring", "configs/inference.json", *args, "--video_format", "None")
    kinematics = json.loads((out / "kinematics/swallow.json").read_text())
    assert kinematics["fps"] == pytest.approx(15.0) and kinematics["units"]["time"] == "s"
    assert kinematics["num_frames"] == 6
    assert nib.load(str(out / "masks/swallow/0005.nii.gz")).shape == (96, 80, 12)  # [W, H, T]: its own size
    assert (out / "kinematics/swallow.png").stat().st_size > 0


@pytest.mark.parametrize(
    "override, message",
    [
        (["--teachers", "['medsam','dinov9']"], "unknown teacher 'dinov9'; choose one of"),
        (["--teachers", "['medsam']", "--teacher_preset", "full"], "medsam_vit_b.pth"),
        (["--teacher_preset", "huge"], "unknown teacher preset 'huge'"),
    ],
)
def test_bad_teacher_settings_stop_before_any_work(tmp_path, override, message):
    result = bundle("training", "configs/train.yaml", "--bundle_root", str(tmp_path), *override, check=False)
    assert result.returncode != 0 and message in result.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "cache").exists()


def test_task_list_that_does_not_match_the_datalist_fails_fast(tmp_path):
    from vfss_agglo_bundle.phantom.dataset import synthesize_dataset

    synthesize_dataset(tmp_path / "data/phantom", studies=3, frames=1, test_frames=None, image_size=64)
    result = bundle(
        "training",
        "configs/train.yaml",
        "--bundle_root",
        str(tmp_path),
        "--teachers",
        "[]",
        "--tasks",
        "['bolus','tongue']",
        check=False,
    )
    assert result.returncode != 0
    assert "has no task ['tongue']" in result.stderr and "set `tasks` in the config" in result.stderr
    assert not (tmp_path / "models").exists()


def _unlabelled_folder(root):
    """A folder of unlabelled VFSS: one 3-frame video and one study of 2 frames (and a file that is neither)."""
    import imageio.v3 as iio

    root.mkdir()
    frames = np.random.default_rng(1).integers(0, 255, (3, 48, 64), dtype=np.uint8)
    iio.imwrite(root / "clip.gif", frames, duration=100, loop=0)
    (root / "caseB").mkdir()
    for i in range(2):
        Image.fromarray(frames[i, :40]).save(root / f"caseB/{i}.png")
    (root / "notes.txt").write_text("not a frame")
    return root


def test_unlabelled_frames_are_found_once_and_bad_folders_are_named(tmp_path):
    from vfss_agglo_bundle.data.sources import unlabelled_items

    source = _unlabelled_folder(tmp_path / "unlabelled")
    items = unlabelled_items(source, tmp_path / "frames")
    assert [(it["study"], it["frame"]) for it in items] == [("unlabelled-clip", 0), ("unlabelled-clip", 1),
                                                            ("unlabelled-clip", 2), ("unlabelled-caseB", 0),
                                                            ("unlabelled-caseB", 1)]  # fmt: skip
    extracted = tmp_path / "frames/images/clip/0000.png"
    stamp = extracted.stat().st_mtime_ns
    assert unlabelled_items(source, tmp_path / "frames") == items and extracted.stat().st_mtime_ns == stamp
    assert unlabelled_items(None, tmp_path) == []
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        unlabelled_items(tmp_path / "nowhere", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no video"):
        unlabelled_items(tmp_path / "empty", tmp_path)


@pytest.mark.slow
def test_unlabelled_dir_feeds_stage_1_only(tmp_path):
    from monai.bundle import ConfigParser

    root, source = tmp_path / "bundle", _unlabelled_folder(tmp_path / "unlabelled")
    args = ["--bundle_root", str(root), *TINY, "--teachers", "['litemedsam']", "--unlabelled_dir", str(source)]
    result = bundle("training", "configs/train.yaml", *args)
    assert "(6 training, 5 unlabelled)" in result.stdout + result.stderr  # 4 studies x 3 frames: 2 of them training
    (store,) = (root / "cache/teachers").iterdir()
    assert sorted(p.name for p in (store / "unlabelled-clip").iterdir()) == [
        f"{i:04d}.v0.safetensors" for i in range(3)
    ]
    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs/train.yaml"))
    parser.update({"bundle_root": str(root), "unlabelled_dir": str(source)})
    distill = [it["study"] for it in parser.get_parsed_content("distill#dataset#data")]
    segment = [it["study"] for it in parser.get_parsed_content("train#dataset#data")]
    assert sum(s.startswith("unlabelled-") for s in distill) == 5
    assert segment and not any(s.startswith("unlabelled-") for s in segment)  # stage 2 and evaluation: labels only
