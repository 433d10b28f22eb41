"""Dataset preparation: phantom synthesis, mask-folder and video import, preview, ensure_dataset, the fire CLI."""

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from PIL import Image
from vfss_agglo_bundle.data.datalist import SPLITS, spaced_frames, validate_datalist
from vfss_agglo_bundle.data.formats import read_frame, read_label
from vfss_agglo_bundle.data.prepare import import_mask_folder, preview_datalist
from vfss_agglo_bundle.data.sources import import_video_frames
from vfss_agglo_bundle.phantom.dataset import ensure_dataset, synthesize_dataset

TASKS = ["bolus", "pharynx", "c2"]


def test_synthesize_writes_a_valid_dataset_split_by_study(tmp_path):
    path = synthesize_dataset(
        tmp_path / "ds", studies=5, frames=3, test_frames=None, image_size=64, seed=1, tasks=TASKS
    )
    dl = json.loads(path.read_text())
    assert dl["tasks"] == TASKS and dl["image_size"] == 64
    assert sum(len(dl[s]) for s in SPLITS) == 15 and all(dl[s] for s in SPLITS)
    assert validate_datalist(path, TASKS) == []
    item = dl["training"][0]
    assert read_frame(tmp_path / "ds" / item["image"]).shape == (64, 64)
    assert read_label(tmp_path / "ds" / item["label"]).shape == (3, 64, 64)
    with pytest.raises(FileExistsError, match="datalist.json already exists"):
        synthesize_dataset(tmp_path / "ds", studies=5, frames=3, test_frames=None, image_size=64, tasks=TASKS)


def test_synthesize_is_deterministic_and_study_seeds_do_not_depend_on_count(tmp_path):
    synthesize_dataset(tmp_path / "a", studies=2, frames=2, test_frames=None, image_size=64, seed=4, tasks=TASKS)
    synthesize_dataset(tmp_path / "b", studies=3, frames=2, test_frames=None, image_size=64, seed=4, tasks=TASKS)
    assert (tmp_path / "a/images/s001/0001.png").read_bytes() == (tmp_path / "b/images/s001/0001.png").read_bytes()
    np.testing.assert_array_equal(
        read_label(tmp_path / "a/labels/s001/0001.nii.gz"), read_label(tmp_path / "b/labels/s001/0001.nii.gz")
    )


def test_ensure_dataset_generates_once_then_reuses_and_checks_tasks(tmp_path, caplog):
    first = ensure_dataset(tmp_path / "ds", TASKS, studies=3, frames=2, test_frames=None, image_size=64)
    before = (tmp_path / "ds/datalist.json").stat().st_mtime_ns
    with caplog.at_level("INFO"):
        assert ensure_dataset(tmp_path / "ds", TASKS, studies=3, frames=2, test_frames=None, image_size=64) == first
    assert "skipping phantom generation" in caplog.text
    assert (tmp_path / "ds/datalist.json").stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="was built for tasks"):
        ensure_dataset(tmp_path / "ds", ["bolus", "tongue"], studies=3, frames=2, test_frames=None, image_size=64)


def test_two_runs_on_one_empty_dataset_folder_write_it_once(tmp_path):
    """Two processes (two study runners) start on the same empty folder: one writes the phantom while the other
    waits for it and then finds it (without the lock, the second refuses the first's half-written files)."""
    code = (  # writing starts 2 s late, so that both processes find the folder empty, whichever starts first
        "import logging, sys, time; import vfss_agglo_bundle.phantom.dataset as dataset; "
        "logging.basicConfig(level=logging.INFO); write = dataset.synthesize_dataset; "
        "dataset.synthesize_dataset = lambda *args, **kwargs: time.sleep(2) or write(*args, **kwargs); "
        f"print(dataset.ensure_dataset(sys.argv[1], {TASKS!r}, studies=6, frames=2, test_frames=None, image_size=64))"
    )
    runs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "ds")], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert [out.strip() for out, _ in outputs] == [str(tmp_path / "ds" / "datalist.json")] * 2
    logs = "".join(err for _, err in outputs)
    assert logs.count("generating 6 phantom studies") == 1 and logs.count("skipping phantom generation") == 1
    reference = synthesize_dataset(tmp_path / "alone", 6, 2, 64, tasks=TASKS, test_frames=None)  # one process alone
    assert json.loads((tmp_path / "ds" / "datalist.json").read_text()) == json.loads(Path(reference).read_text())


def test_ensure_dataset_refuses_a_phantom_made_with_other_settings(tmp_path):
    ensure_dataset(tmp_path / "ds", TASKS, studies=3, frames=2, test_frames=None, image_size=64, phantom="v2")
    before = (tmp_path / "ds/datalist.json").read_bytes()
    with pytest.raises(
        ValueError, match=r"phantom: made with 'v2', asked for 'v1'; frames: made with 2, asked for 9"
    ) as e:
        ensure_dataset(tmp_path / "ds", TASKS, studies=3, frames=9, test_frames=None, image_size=64, phantom="v1")
    assert "another --dataset_dir" in str(e.value) and "studies" not in str(e.value)
    for other in ({"studies": 4}, {"seed": 1}, {"test_frames": 3}, {"ratios": (1, 1, 1)}):
        with pytest.raises(ValueError, match=f"{next(iter(other))}: made with"):
            ensure_dataset(
                tmp_path / "ds", TASKS, **{"studies": 3, "frames": 2, "test_frames": None, "image_size": 64, **other}
            )
    assert (tmp_path / "ds/datalist.json").read_bytes() == before  # never overwritten
    # a datalist from before 0.8.0 records neither test_frames nor ratios: test_frames was frames
    datalist = json.loads(before)
    for key in ("test_frames", "ratios", "image_size"):
        del datalist["source"][key]
    (tmp_path / "ds/datalist.json").write_text(json.dumps(datalist))
    assert ensure_dataset(
        tmp_path / "ds", TASKS, studies=3, frames=2, test_frames=None, image_size=64, ratios=(1, 1, 1)
    )
    with pytest.raises(ValueError, match="test_frames: made with 2, asked for 24"):
        ensure_dataset(tmp_path / "ds", TASKS, studies=3, frames=2, test_frames=24, image_size=64)
    # a user's own data is not a phantom: no phantom settings to compare
    del datalist["source"]
    (tmp_path / "ds/datalist.json").write_text(json.dumps(datalist))
    assert ensure_dataset(tmp_path / "ds", TASKS, studies=5, frames=7, test_frames=None, image_size=64, phantom="v1")


def test_synthesize_gives_test_studies_their_own_length(tmp_path):
    path = synthesize_dataset(tmp_path / "ds", studies=6, frames=2, test_frames=5, image_size=64, ratios=(4, 1, 1),
                              tasks=TASKS)  # fmt: skip
    dl = json.loads(path.read_text())
    counts = {s: Counter(it["study"] for it in dl[s]) for s in SPLITS}
    assert [len(counts[s]) for s in SPLITS] == [4, 1, 1]
    assert set(counts["training"].values()) == set(counts["validation"].values()) == {2}
    assert set(counts["test"].values()) == {5}
    test_study = next(iter(counts["test"]))
    truth = json.loads((tmp_path / "ds/kinematics" / f"{test_study}.json").read_text())
    assert truth["num_frames"] == 5 and truth["fps"] == pytest.approx(4 / 3)  # 5 frames over the 3 s swallow
    assert dl["source"]["frames"] == 2 and dl["source"]["test_frames"] == 5 and dl["source"]["ratios"] == [4, 1, 1]
    assert dl["source"]["fps"] == pytest.approx(1 / 3) and dl["source"]["test_fps"] == pytest.approx(4 / 3)


def test_spaced_frames_picks_evenly_spaced_frames_of_each_study():
    items = [{"study": s, "frame": f} for s, n in (("a", 8), ("b", 3), ("c", 1)) for f in range(n)]
    picked = spaced_frames(items, 2)
    assert [(it["study"], it["frame"]) for it in picked] == [("a", 2), ("a", 6), ("b", 0), ("b", 2), ("c", 0)]
    assert [(it["study"], it["frame"]) for it in spaced_frames(items, 3)][:3] == [("a", 1), ("a", 4), ("a", 6)]
    assert spaced_frames(items, None) == items
    with pytest.raises(ValueError, match="frames per study must be >= 1"):
        spaced_frames(items, 0)


def _export(root: Path) -> None:
    """An annotation-tool style export: RGB and 16-bit frames, one mask PNG per structure, some absent."""
    for s, study in enumerate(["patA", "patB", "patC"]):
        (root / study / "frames").mkdir(parents=True)
        (root / study / "masks").mkdir()
        for f in range(2):
            frame = (
                np.zeros((40, 50, 3), np.uint8)
                if s == 0
                else np.linspace(0, 1000 * (f + 1), 2000).reshape(40, 50).astype(np.uint16)
            )
            Image.fromarray(frame).save(root / study / "frames" / f"img{f}.png")
            mask = np.zeros((40, 50), np.uint8)
            mask[5:15, 30:45] = 255
            Image.fromarray(mask).save(root / study / "masks" / f"img{f}_pharynx.png")
            if f == 1:
                Image.fromarray(mask[::-1]).save(root / study / "masks" / f"img{f}_bolus.png")


def test_import_masks_builds_the_bundle_format(tmp_path):
    _export(tmp_path / "export")
    path = import_mask_folder(tmp_path / "export", tmp_path / "ds", tasks=TASKS, ratios=(1, 1, 1))
    assert validate_datalist(path, TASKS) == []
    dl = json.loads(path.read_text())
    items = {(it["study"], it["frame"]): it for s in SPLITS for it in dl[s]}
    assert len(items) == 6 and dl["image_size"] == 40
    label0 = read_label(tmp_path / "ds" / items[("patA", 0)]["label"])
    label1 = read_label(tmp_path / "ds" / items[("patA", 1)]["label"])
    assert label0[0].sum() == 0 and label0[1].sum() == 150 and label0[2].sum() == 0  # bolus absent, c2 never drawn
    assert label1[0][30:35, 30:45].all() and label1[1][5:15, 30:45].all()  # flipped bolus mask lands at the bottom
    assert read_frame(tmp_path / "ds" / items[("patB", 1)]["image"]).max() == 255  # 16-bit scaled to 8-bit


def test_import_masks_resizes_and_reports_bad_layouts(tmp_path):
    _export(tmp_path / "export")
    path = import_mask_folder(tmp_path / "export", tmp_path / "ds", tasks=TASKS, image_size=32)
    assert json.loads(path.read_text())["image_size"] == 32
    with pytest.raises(FileNotFoundError, match="no study folders with a 'frames/' subfolder"):
        import_mask_folder(tmp_path / "nowhere", tmp_path / "ds2", tasks=TASKS)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "export/patB/masks/img0_c2.png")
    with pytest.raises(ValueError, match=r"img0_c2\.png is 10x10 but frame .*img0\.png is 40x50"):
        import_mask_folder(tmp_path / "export", tmp_path / "ds3", tasks=TASKS)


def test_import_video_extracts_grey_frames(tmp_path):
    import imageio.v3 as iio

    frames = np.stack([np.full((24, 32, 3), 20 * i, np.uint8) for i in range(6)])
    iio.imwrite(tmp_path / "swallow.gif", frames, duration=50, loop=0)
    written = import_video_frames(tmp_path / "swallow.gif", tmp_path / "out", every=2)
    assert [p.name for p in written] == ["0000.png", "0001.png", "0002.png"]
    assert all(p.parent.name == "swallow" for p in written)
    assert read_frame(written[1]).shape == (24, 32)


def test_preview_writes_a_contact_sheet(tmp_path):
    path = synthesize_dataset(tmp_path / "ds", studies=3, frames=4, test_frames=None, image_size=64, tasks=TASKS)
    out = preview_datalist(path, tmp_path / "preview.png", split="training", num=4, cols=2)
    sheet = np.asarray(Image.open(out))
    assert sheet.shape[1] == 128 and sheet.shape[0] > 2 * 64 and sheet.ndim == 3
    with pytest.raises(ValueError, match="no 'test' frames of study 'zzz'"):
        preview_datalist(path, tmp_path / "p2.png", split="test", study="zzz")


def test_cli_validate_exits_nonzero_and_names_the_file(tmp_path):
    path = synthesize_dataset(tmp_path / "ds", studies=3, frames=1, test_frames=None, image_size=64, tasks=TASKS)
    item = json.loads(path.read_text())["test"][0]
    (tmp_path / "ds" / item["image"]).write_bytes(b"garbage")
    cli = [sys.executable, str(ROOT / "scripts/prepare_data.py"), "validate", "--datalist", str(path)]
    result = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert f"{item['image']} cannot be read as an image" in result.stdout
