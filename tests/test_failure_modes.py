"""The failure-mode catalogue (docs/failure_modes.md): bad files, configs, videos, teacher stores, a second run, a full
disk and bad numbers, through the runs (`training`, `evaluating`, `inferring`) and the scripts.

Each case breaks one thing in a copy of a bundle folder that holds a finished run, then does what a user would do.
It must stop with one error that names the file or config key (a regular expression below), and leave every file
already under the bundle folder byte-identical; the only files a failed run may add are its run record and logs
under ``logs/``, and a failed `inferring` into a new output folder keeps what it wrote before it stopped.
`test_bad_input.py` holds the 19 cases of 0.6.0; the recovery cases (a stale lock taken over, a corrupt store entry
recomputed, a truncated or variable-rate video read) are tested where they are built and listed apart in the
catalogue.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT
from finished_bundle import SIZE, first_file, messages, phantom_datalist, run_bundle, tree
from vfss_agglo_bundle.data.formats import write_label
from vfss_agglo_bundle.utils.io import save_torch

Action = Callable[[], object]


def _training(root: Path, **overrides) -> Action:
    return lambda: run_bundle("training", root, **overrides)


def _inferring(root: Path, source: Path | None = None, **overrides) -> Action:
    source = source or root / "data/phantom/images" / _first_study(root)
    settings = dict(input=str(source), output_dir=str(root / "eval/inference"), image_size=SIZE, **overrides)
    return lambda: run_bundle("inferring", root, "configs/inference.json", **settings)


def _script(name: str):
    """A module of ``scripts/`` (the functions its fire CLI calls)."""
    spec = importlib.util.spec_from_file_location(f"scripts_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _first_study(root: Path) -> str:
    return first_file(root, "image").parent.name


def _redo_stages(root: Path, *stages: str) -> None:
    """Remove what the named stages wrote, so that the next `training` runs them again."""
    for stage in stages:
        for path in (root / "models").glob(f"{stage}*"):
            path.unlink()
    if "distillation" in stages:
        (root / "models/student_encoder.pt").unlink()
    if "segmentation" in stages:
        (root / "models/model.pt").unlink()


def _entries(root: Path) -> list[Path]:
    return sorted((root / "cache").rglob("*.safetensors"))


# ---- files ----------------------------------------------------------------------------------------------------------
def datalist_not_json(root: Path) -> Action:
    path, _ = phantom_datalist(root)
    path.write_text(path.read_text()[:100])
    return _training(root)


def datalist_item_without_label(root: Path) -> Action:
    path, datalist = phantom_datalist(root)
    del datalist["training"][0]["label"]
    path.write_text(json.dumps(datalist))
    return _training(root)


def label_of_another_size(root: Path) -> Action:
    write_label(first_file(root, "label"), np.zeros((12, SIZE // 2, SIZE // 2), np.uint8), overwrite=True)
    return _training(root)


def stage_record_not_json(root: Path) -> Action:
    path = root / "models/distillation.done.json"
    path.write_text(path.read_text()[:20])
    return _training(root)


def resume_checkpoint_truncated(root: Path) -> Action:
    (root / "models/segmentation.done.json").unlink()
    (root / "models/model.pt").unlink()
    path = root / "models/segmentation_resume.pt"
    path.write_bytes(path.read_bytes()[:1000])
    return _training(root)


def model_truncated(root: Path) -> Action:
    path = root / "models/model.pt"
    path.write_bytes(path.read_bytes()[:1000])
    return lambda: run_bundle("evaluating", root, "configs/evaluate.yaml", image_size=SIZE)


def inference_input_missing(root: Path) -> Action:
    return _inferring(root, root / "data/no_such_study")


def inference_folder_without_frames(root: Path) -> Action:
    (root / "data/empty_study").mkdir()
    return _inferring(root, root / "data/empty_study")


def inference_outputs_exist(root: Path) -> Action:
    _inferring(root)()  # a first run writes its outputs; the second must not replace them
    return _inferring(root)


def points_without_a_column(root: Path) -> Action:
    (root / "incoming").mkdir()
    points = root / "incoming/points.csv"
    points.write_text("frame,structure,x\n0,hyoid,1\n")
    kinematics = _script("kinematics")
    masks = root / "data/phantom/labels"
    return lambda: kinematics.validate(points=str(points), predictions=str(masks), out=str(root / "eval/points"))


def cvat_xml_malformed(root: Path) -> Action:
    (root / "incoming/frames").mkdir(parents=True)
    xml = root / "incoming/study.xml"
    xml.write_text('<annotations><version>1.1</version><track id="0" label="hyoid">\n<box frame="0"></annotations>')
    prepare = _script("prepare_data")
    return lambda: prepare.import_cvat(annotations=str(xml), frames=str(root / "incoming/frames"),
                                       out_dir=str(root / "data/imported"))  # fmt: skip


# ---- configs --------------------------------------------------------------------------------------------------------
def label_map_unknown_task(root: Path) -> Action:
    incoming = root / "incoming"
    incoming.mkdir()
    (incoming / "map.yaml").write_text(yaml.safe_dump({"tongue base": "tongue"}))
    coco = {"images": [{"id": 1, "file_name": "f.png", "width": 8, "height": 8}], "annotations": [],
            "categories": [{"id": 1, "name": "tongue base"}]}  # fmt: skip
    (incoming / "coco.json").write_text(json.dumps(coco))
    prepare = _script("prepare_data")
    paths = dict(
        annotations=str(incoming / "coco.json"), images_dir=str(incoming), label_map=str(incoming / "map.yaml")
    )
    return lambda: prepare.import_coco(out_dir=str(root / "data/imported"), **paths)


def labelled_fraction_out_of_range(root: Path) -> Action:
    _redo_stages(root, "segmentation")
    return _training(root, labelled_fraction=1.5)


def image_size_other_than_the_dataset_s(root: Path) -> Action:
    return _training(root, image_size=100)


def val_interval_zero(root: Path) -> Action:
    _redo_stages(root, "segmentation")
    return _training(root, val_interval=0)


def lowres_epochs_negative(root: Path) -> Action:
    _redo_stages(root, "segmentation")
    return _training(root, lowres_epochs=-1)


def divergence_factor_below_one(root: Path) -> Action:
    _redo_stages(root, "segmentation")
    return _training(root, divergence_factor=0.5)


def fps_not_positive(root: Path) -> Action:
    return _inferring(root, fps=-5)


def teacher_weights_missing(root: Path) -> Action:
    return _training(root, teachers=["rad_dino"], teacher_preset="full", teacher_dir=str(root / "weights"))


def points_without_masks(root: Path) -> Action:
    (root / "incoming").mkdir()
    points = root / "incoming/points.csv"
    points.write_text("frame,structure,x,y\n0,hyoid,1,2\n")
    kinematics = _script("kinematics")
    return lambda: kinematics.validate(points=str(points), out=str(root / "eval/points"))


def unlabelled_dir_not_a_folder(root: Path) -> Action:
    _redo_stages(root, "distillation", "segmentation")
    return _training(root, unlabelled_dir=str(root / "videos_not_copied_yet"))


# ---- videos ---------------------------------------------------------------------------------------------------------
def zero_length_video(root: Path) -> Action:
    video = root / "incoming/study.mp4"
    video.parent.mkdir()
    video.write_bytes(b"")
    return _inferring(root, video)


def not_a_video(root: Path) -> Action:
    video = root / "incoming/study.avi"
    video.parent.mkdir()
    video.write_bytes(np.random.default_rng(0).bytes(20_000))
    return _inferring(root, video)


def mp4_without_its_end(root: Path) -> Action:
    from vfss_agglo_bundle.data.video import write_video

    video = write_video(root / "incoming/whole.mp4", [np.full((64, 96), 10 * i, np.uint8) for i in range(20)], 10)
    cut = root / "incoming/study.mp4"
    cut.write_bytes(video.read_bytes()[: video.stat().st_size // 2])
    return _inferring(root, cut)


# ---- teacher store --------------------------------------------------------------------------------------------------
def store_meta_not_json(root: Path) -> Action:
    _redo_stages(root, "distillation", "segmentation")
    (meta,) = (root / "cache").rglob("meta.json")
    meta.write_text(meta.read_text()[:30])
    return _training(root)


# ---- concurrency ----------------------------------------------------------------------------------------------------
HOLD = "import sys, time; from vfss_agglo_bundle.workflow.lock import lock_bundle; lock_bundle(sys.argv[1]); " \
       "print('held', flush=True); time.sleep(600)"  # fmt: skip
_HOLDERS: list[subprocess.Popen] = []


def folder_in_use(root: Path) -> Action:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(root)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    _HOLDERS.append(holder)
    assert holder.stdout.readline().strip() == "held"
    return _training(root)


# ---- disk -----------------------------------------------------------------------------------------------------------
def _fail_writes_under(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Every file the bundle's writers start under ``folder`` fails as on a full disk."""
    import tempfile

    original = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):  # noqa: A002 - tempfile's own name
        if dir is not None and (Path(dir) == folder or folder in Path(dir).parents):
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def disk_full_writing_masks(root: Path, monkeypatch: pytest.MonkeyPatch) -> Action:
    _fail_writes_under(monkeypatch, root / "eval/inference/masks")
    return _inferring(root)


def disk_full_writing_a_checkpoint(root: Path, monkeypatch: pytest.MonkeyPatch) -> Action:
    _redo_stages(root, "segmentation")
    _fail_writes_under(monkeypatch, root / "models")
    return _training(root)


def disk_full_writing_a_store_entry(root: Path, monkeypatch: pytest.MonkeyPatch) -> Action:
    _redo_stages(root, "distillation", "segmentation")
    _entries(root)[0].unlink()
    _fail_writes_under(monkeypatch, root / "cache")
    return _training(root)


# ---- numerics -------------------------------------------------------------------------------------------------------
def encoder_that_overflows(root: Path) -> Action:
    """Finite stage-1 weights so large that stage 2's forward pass overflows: the loss is not a number."""
    _redo_stages(root, "segmentation")
    path = root / "models/student_encoder.pt"
    state = torch.load(path, map_location="cpu", weights_only=True)
    path.unlink()
    save_torch({k: v * 1e30 if v.is_floating_point() else v for k, v in state.items()}, path)
    return _training(root)


def model_with_non_finite_weights(root: Path) -> Action:
    path = root / "models/model.pt"
    state = torch.load(path, map_location="cpu", weights_only=True)
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name].view(-1)[0] = float("nan")
    path.unlink()
    save_torch(state, path)
    return _inferring(root)


@dataclass(frozen=True)
class Case:
    kind: str
    prepare: Callable[..., Action]
    message: str  # regular expression the error (or an error it was raised from) must match


CATALOGUE: dict[str, Case] = {
    "datalist not JSON": Case("files", datalist_not_json, r"datalist\.json is not valid JSON"),
    "datalist item without its label": Case("files", datalist_item_without_label, r"datalist\.json.*'label'"),
    "label of another size than its frame": Case("files", label_of_another_size, r"0000\.nii\.gz is 32x32"),
    "stage record not JSON": Case("files", stage_record_not_json, r"distillation\.done\.json is not valid JSON"),
    "resume checkpoint truncated": Case(
        "files", resume_checkpoint_truncated, r"resume checkpoint .*segmentation_resume\.pt cannot be read"
    ),
    "model file truncated": Case("files", model_truncated, r"cannot read segmenter checkpoint .*model\.pt"),
    "inference input missing": Case("files", inference_input_missing, r"no_such_study is neither a folder"),
    "inference folder without frames": Case("files", inference_folder_without_frames, r"no frames .* under .*empty"),
    "inference outputs already there": Case(
        "files",
        inference_outputs_exist,
        r"eval/inference already holds the outputs of an earlier run \(masks, overlays, videos, kinematics\)",
    ),
    "point track without a column": Case("files", points_without_a_column, r"points\.csv: no column\(s\) \['y'\]"),
    "CVAT XML malformed": Case("files", cvat_xml_malformed, r"study\.xml is not a CVAT XML file \(.*line 2"),
    "label map to an unknown task": Case("configs", label_map_unknown_task, r"map\.yaml.*'tongue'"),
    "labelled fraction out of range": Case(
        "configs", labelled_fraction_out_of_range, r"labelled_fraction must be in \(0, 1\], got 1\.5"
    ),
    "image size other than the dataset's": Case(
        "configs",
        image_size_other_than_the_dataset_s,
        r"datalist\.json holds a phantom dataset made with other settings \(image_size: made with 64, asked for 100\)",
    ),
    "validation interval 0": Case("configs", val_interval_zero, r"`val_interval` must be an integer >= 1 .*got 0"),
    "low-resolution epochs < 0": Case(
        "configs", lowres_epochs_negative, r"`lowres_epochs` must be an integer >= 0 .*got -1"
    ),
    "divergence factor <= 1": Case("configs", divergence_factor_below_one, r"divergence_factor must be > 1"),
    "frame rate <= 0": Case("configs", fps_not_positive, r"fps must be > 0"),
    "teacher weights missing": Case("configs", teacher_weights_missing, r"teacher weights are missing under .*weights"),
    "point tracks without masks": Case("configs", points_without_masks, r"--points .* --predictions"),
    "unlabelled folder missing": Case("configs", unlabelled_dir_not_a_folder, r"unlabelled_dir .*videos_not_copied"),
    "zero-length video": Case("videos", zero_length_video, r"study\.mp4 is empty"),
    "not a video": Case("videos", not_a_video, r"study\.avi cannot be opened as a video"),
    "MP4 without its end": Case("videos", mp4_without_its_end, r"study\.mp4 cannot be opened as a video"),
    "store meta.json not JSON": Case("store", store_meta_not_json, r"meta\.json is corrupt"),
    "bundle folder in use": Case("concurrency", folder_in_use, r"in use by another run: training \(pid \d+"),
    "disk full writing masks": Case("disk", disk_full_writing_masks, r"could not write .*0000\.nii\.gz \(No space"),
    "disk full writing a checkpoint": Case("disk", disk_full_writing_a_checkpoint, r"could not write .*models/"),
    "disk full writing a store entry": Case("disk", disk_full_writing_a_store_entry, r"could not write .*cache/"),
    "weights that overflow": Case("numerics", encoder_that_overflows, r"segmentation: the loss is (nan|inf)"),
    "model with non-finite weights": Case("numerics", model_with_non_finite_weights, r"model\.pt.*non-finite"),
}


def _is_new_output(path: str, before: dict[str, str]) -> bool:
    """A run record or log, or what a failed `inferring` wrote into its new output folder before it stopped."""
    earlier = any(k.startswith("eval/inference/") for k in before)
    record = re.fullmatch(r"eval/inference/inferring-[\d-]+\.json", path)
    return path.startswith("logs/") or bool(record) or (path.startswith("eval/inference/") and not earlier)


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_each_failure_names_its_file_or_key_and_changes_nothing(finished, tmp_path, monkeypatch, name):
    case = CATALOGUE[name]
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = Path(shutil.copytree(finished, tmp_path / "bundle"))
    needs_patch = "monkeypatch" in case.prepare.__code__.co_varnames[: case.prepare.__code__.co_argcount]
    action = case.prepare(root, monkeypatch) if needs_patch else case.prepare(root)
    before = tree(root)
    try:
        with pytest.raises(Exception) as err:
            action()
    finally:
        for holder in _HOLDERS:
            holder.kill()
            holder.wait()
        _HOLDERS.clear()
    assert re.search(case.message, messages(err.value), re.S), messages(err.value)
    after = tree(root)
    assert {k: after.get(k) for k in before} == before
    assert all(_is_new_output(k, before) for k in set(after) - set(before)), sorted(set(after) - set(before))


def test_the_catalogue_lists_every_case_by_kind():
    text = (ROOT / "docs/failure_modes.md").read_text()
    listed = re.findall(r"^\| (\w+) \| ([^|]+?) \|", text, re.M)
    assert [(kind, name) for kind, name in listed if kind != "kind"] == [(c.kind, n) for n, c in CATALOGUE.items()]
    assert len({c.prepare for c in CATALOGUE.values()}) == len(CATALOGUE) >= 26
