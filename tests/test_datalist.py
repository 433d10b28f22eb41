"""Study-level splitting and datalist validation."""

import json

import numpy as np
import pytest
from PIL import Image
from vfss_agglo_bundle.data.datalist import (
    SPLITS,
    build_datalist,
    frame_key,
    load_datalist,
    split_studies,
    validate_datalist,
)
from vfss_agglo_bundle.data.formats import write_frame, write_label
from vfss_agglo_bundle.utils.io import write_json

TASKS = ["bolus", "pharynx", "c1"]


@pytest.mark.parametrize("n_studies", [3, 7, 20])
def test_split_is_by_study_complete_and_deterministic(n_studies):
    studies = [f"s{i:03d}" for i in range(n_studies)]
    split = split_studies(studies, (0.7, 0.15, 0.15), seed=1)
    assert split == split_studies(list(reversed(studies)), (0.7, 0.15, 0.15), seed=1)
    assigned = [s for part in split.values() for s in part]
    assert sorted(assigned) == studies  # every study exactly once
    assert all(split[name] for name in SPLITS)  # no empty split
    assert len(split["training"]) >= len(split["test"])


def test_build_datalist_never_puts_one_study_in_two_splits():
    items = [
        {"image": f"i/{s}/{f}.png", "label": f"l/{s}/{f}.nii.gz", "study": s, "frame": f}
        for s in [f"s{i}" for i in range(10)]
        for f in range(5)
    ]
    dl = build_datalist(items, TASKS, 64, (0.6, 0.2, 0.2), seed=3)
    owners = {}
    for split in SPLITS:
        for it in dl[split]:
            assert owners.setdefault(it["study"], split) == split
    assert sum(len(dl[s]) for s in SPLITS) == 50 and dl["tasks"] == TASKS
    assert frame_key(dl["training"][0]) == f"{dl['training'][0]['study']}/0000"


def _write_dataset(root, n_studies=3, frames=2, size=16, channels=3):
    items = []
    for s in range(n_studies):
        for f in range(frames):
            im, lb = f"images/s{s}/{f:04d}.png", f"labels/s{s}/{f:04d}.nii.gz"
            write_frame(root / im, np.full((size, size), 40 * f, np.uint8))
            write_label(root / lb, np.zeros((channels, size, size), np.uint8))
            items.append({"image": im, "label": lb, "study": f"s{s}", "frame": f})
    write_json(root / "datalist.json", build_datalist(items, TASKS, size, (1, 1, 1)))
    return root / "datalist.json"


def _edit(path, fn):
    dl = json.loads(path.read_text())
    fn(dl)
    path.write_text(json.dumps(dl))


def test_clean_dataset_has_no_problems(tmp_path):
    path = _write_dataset(tmp_path)
    assert validate_datalist(path, TASKS) == []
    assert len(load_datalist(path, "training", TASKS)) == 2


def test_validate_reports_each_problem_naming_the_file(tmp_path):
    path = _write_dataset(tmp_path)
    dl = json.loads(path.read_text())
    first = lambda split: dl[split][0]  # noqa: E731
    # corrupt PNG, colour frame, 16-bit frame, missing label, truncated NIfTI, wrong channel count, other size
    (tmp_path / first("training")["image"]).write_bytes(b"not a png")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / dl["training"][1]["image"])
    Image.fromarray(np.zeros((16, 16), np.uint16)).save(tmp_path / first("validation")["image"])
    (tmp_path / dl["validation"][1]["label"]).unlink()
    data = (tmp_path / first("test")["label"]).read_bytes()
    (tmp_path / first("test")["label"]).write_bytes(data[:20])
    write_label(tmp_path / dl["test"][1]["label"], np.zeros((5, 16, 16), np.uint8), overwrite=True)
    problems = validate_datalist(path, TASKS)
    text = "\n".join(problems)
    assert f"{first('training')['image']} cannot be read as an image" in text
    assert f"{dl['training'][1]['image']} has PIL mode 'RGB'" in text
    assert f"{first('validation')['image']} has PIL mode 'I;16'" in text
    assert f"{dl['validation'][1]['label']} does not exist" in text
    assert f"{first('test')['label']} cannot be read as NIfTI" in text
    assert f"{dl['test'][1]['label']} has 5 channels but there are 3 tasks" in text
    assert len(problems) == 6


def test_validate_reports_leak_size_mismatch_tasks_and_empty(tmp_path):
    path = _write_dataset(tmp_path)
    _edit(path, lambda dl: dl["test"].append(dict(dl["training"][0])))
    leaked = dict(json.loads(path.read_text())["training"][0])
    write_frame(tmp_path / "images/big.png", np.zeros((20, 20), np.uint8))
    write_label(tmp_path / "labels/big.nii.gz", np.zeros((3, 20, 20), np.uint8))
    _edit(
        path,
        lambda dl: dl["training"].append(
            {"image": "images/big.png", "label": "labels/big.nii.gz", "study": leaked["study"], "frame": 9}
        ),
    )
    problems = "\n".join(validate_datalist(path, TASKS))
    assert f"study {leaked['study']!r} is in both 'training' and 'test'" in problems
    assert f"images/big.png is 20x20 but the other frames of study {leaked['study']!r} are 16x16" in problems
    assert "lack the expected ['tongue']" in "\n".join(validate_datalist(path, ["bolus", "tongue"]))
    assert not any("expected" in p for p in validate_datalist(path, ["c1", "bolus"]))  # a subset, in any order
    _edit(path, lambda dl: [dl.__setitem__(s, []) for s in SPLITS])
    assert any("every split" in p for p in validate_datalist(path, TASKS))
    (tmp_path / "broken.json").write_text("{nope")
    assert "broken.json is not valid JSON" in validate_datalist(tmp_path / "broken.json")[0]


def test_load_datalist_refuses_other_tasks(tmp_path):
    path = _write_dataset(tmp_path)
    with pytest.raises(ValueError, match=r"datalist.json was built for tasks \['bolus', 'pharynx', 'c1'\] and has no"):
        load_datalist(path, "training", ["bolus", "tongue"])
    with pytest.raises(KeyError, match="no 'testing' list"):
        load_datalist(path, "testing")


def test_a_task_subset_reads_its_channels_by_name(tmp_path):
    """A single-task or reordered task list reads the named channels of a 12-channel (here 3) dataset."""
    from vfss_agglo_bundle.data.datalist import label_channels
    from vfss_agglo_bundle.data.transforms import LoadVFSSFramed

    path = _write_dataset(tmp_path)
    item = load_datalist(path, "training", ["c1", "bolus"])[0]
    label = np.zeros((3, 16, 16), np.uint8)
    label[0, :2], label[2, :5] = 1, 1  # bolus: 2 rows, c1: 5 rows
    write_label(item["label"], label, overwrite=True)
    assert label_channels(path, TASKS) is None and label_channels(path, ["c1", "bolus"]) == [2, 0]
    loader = LoadVFSSFramed(keys=["image", "label"], image_size=16, num_tasks=2, channels=[2, 0])
    out = loader(item)["label"]
    assert out.shape == (2, 16, 16) and out[0].sum() == 5 * 16 and out[1].sum() == 2 * 16
    assert label_channels(tmp_path / "missing.json", ["c1"]) is None  # no datalist yet: nothing to select
