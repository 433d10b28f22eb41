"""scripts/compare.py: one real training run per teacher set, then a side-by-side table and chart."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT
from vfss_agglo_bundle.compare import comparison_markdown, comparison_table, default_teacher_sets


def test_default_sets():
    assert default_teacher_sets(["litemedsam"]) == {"scratch": [], "litemedsam": ["litemedsam"]}
    sets = default_teacher_sets(["medsam", "rad_dino"])
    assert sets["medsam+rad_dino"] == ["medsam", "rad_dino"] and len(sets) == 4


def test_table_marks_the_best_run_per_task():
    reports = {
        "scratch": {"rows": [{"task": "bolus", "dice": 0.5}, {"task": "mean", "dice": 0.5}]},
        "litemedsam": {"rows": [{"task": "bolus", "dice": 0.7}, {"task": "mean", "dice": 0.7}]},
    }
    names, rows = comparison_table(reports)
    assert names == ["scratch", "litemedsam"] and rows[0] == {"task": "bolus", "scratch": 0.5, "litemedsam": 0.7}
    assert "| bolus | 0.5000 | **0.7000** |" in comparison_markdown(names, rows)


@pytest.mark.slow
def test_compare_cli_runs_each_set_on_shared_data(tmp_path):
    overrides = [
        "--phantom_studies",
        "3",
        "--phantom_frames",
        "2",
        "--image_size",
        "64",
        "--teacher_preset",
        "tiny",
        "--distill_epochs",
        "1",
        "--seg_epochs",
        "1",
        "--val_interval",
        "1",
        "--distill_batch_size",
        "2",
        "--seg_batch_size",
        "2",
    ]
    cmd = [
        sys.executable,
        "scripts/compare.py",
        "--teachers",
        "['medsam']",
        "--out_dir",
        str(tmp_path),
        "--overrides",
        repr(overrides),
    ]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=900)
    result = json.loads((tmp_path / "compare.json").read_text())
    assert list(result["reports"]) == ["scratch", "medsam"]
    assert [r["task"] for r in result["dice"]][-1] == "mean" and len(result["dice"]) == 13
    assert (tmp_path / "compare.png").stat().st_size > 1000 and "| mean |" in (tmp_path / "compare.md").read_text()
    assert not (tmp_path / "scratch/cache").exists() and (tmp_path / "cache").is_dir()  # one shared store
    assert (tmp_path / "medsam/models/distillation.done.json").exists()
    assert not (tmp_path / "scratch/models/distillation.done.json").exists()  # scratch has no stage 1
