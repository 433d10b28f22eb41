"""The stage-2 sweep's summaries and report (vfss_agglo_bundle.sweep, scripts/sweep.py), from hand-built runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from vfss_agglo_bundle.sweep import from_study_run, paired_difference, run_variant, sweep_markdown
from vfss_agglo_bundle.utils.io import read_json, write_json

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ("s01", "s02", "s03", "s04")


def _variant(name: str, studies: list[float], seconds: float | None = 600.0) -> dict:
    """A sweep summary whose test studies have mean Dice ``studies`` (hyoid 0.1 below, epiglottis 0.2 below)."""
    per_study = {s: {"mean": v, "hyoid": v - 0.1, "epiglottis": v - 0.2} for s, v in zip(STUDIES, studies, strict=True)}
    mean = float(np.mean(studies))
    test = {"mean": {"dice": mean}, "hyoid": {"dice": mean - 0.1}, "epiglottis": {"dice": mean - 0.2}}
    return {"name": name, "overrides": {"seg_lr": 0.008}, "val_curve": [[2, 0.5], [4, 0.7], [6, 0.65]],
            "best_val": 0.7, "test": test, "studies": per_study, "stage2_seconds": seconds, "threads": 2}  # fmt: skip


def test_the_paired_difference_is_the_mean_over_studies_with_an_interval_around_it():
    a, b = _variant("a", [0.80, 0.82, 0.90, 0.84]), _variant("b", [0.78, 0.80, 0.85, 0.83])
    mean, low, high = paired_difference(a, b)
    assert mean == pytest.approx((0.02 + 0.02 + 0.05 + 0.01) / 4)
    assert 0.01 <= low < mean < high <= 0.05  # a bootstrap of 4 differences stays within their range
    with pytest.raises(ValueError, match="a and c share no test study"):
        paired_difference(a, {**_variant("c", [0.8] * 4), "studies": {"t01": {"mean": 0.8}}})


def test_the_table_names_the_reference_difference_small_structures_and_time():
    reference = _variant("default-finetune-s0", [0.78, 0.80, 0.85, 0.83], seconds=None)
    lines = sweep_markdown([reference, _variant("lr8e-3", [0.80, 0.82, 0.90, 0.84])], reference).splitlines()
    assert lines[0].startswith("| run | overrides | best val mean Dice (epoch) | test mean Dice | vs reference")
    cells = [c.strip() for c in lines[3].split("|")[1:-1]]
    assert cells[0] == "lr8e-3" and cells[1] == "seg_lr=0.008" and cells[2] == "0.7000 (4)"
    assert cells[3] == "0.8400" and cells[4].startswith("+0.0250 [")
    assert cells[5:] == ["0.740", "0.640", "epiglottis 0.640", "10.0"]
    reference_cells = [c.strip() for c in lines[2].split("|")[1:-1]]
    assert reference_cells[4] == "-" and reference_cells[-1] == "-"


def test_a_study_run_reads_as_a_variant():
    study_run = read_json(ROOT / "docs/study/runs/default-e16-20-finetune-s0.json")  # the default run
    run = from_study_run(study_run)
    assert run["name"] == "default-e16-20-finetune-s0" and run["stage2_seconds"] is None
    assert run["test"]["mean"]["dice"] == study_run["test"]["tasks"]["mean"]["dice"]
    assert [e for e, _ in run["val_curve"]] == list(range(2, 21, 2))
    assert run["best_val"] == max(study_run["validation_curve"].values())
    assert len(run["studies"]) == 12 and run["overrides"] == {}  # the default's teachers, balancer, epochs go unsaid
    hed = from_study_run({**study_run, "overrides": {"teachers": ["hed"], "balancing": "attention", "seg_epochs": 40}})
    assert hed["overrides"] == {"teachers": ["hed"], "seg_epochs": 40}
    assert paired_difference(run, run) == (0.0, 0.0, 0.0)


def test_a_variant_needs_the_base_runs_stage_1_and_a_finished_one_is_only_copied(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no .*student_encoder.pt.*run `training` there first"):
        run_variant(tmp_path / "base", tmp_path / "sweep", "v", {})
    finished = _variant("v", [0.8] * 4)
    write_json(tmp_path / "sweep/v/sweep_run.json", finished)
    lr = {"seg_lr": 0.008}
    assert run_variant(tmp_path / "base", tmp_path / "sweep", "v", lr, summaries=tmp_path / "kept") == finished
    assert read_json(tmp_path / "kept/v.json") == finished
    assert run_variant(tmp_path / "base", tmp_path / "sweep", "v", lr, summaries=tmp_path / "kept") == finished
    with pytest.raises(ValueError, match=r"sweep_run.json is variant 'v' with overrides \{'seg_lr': 0.008\}, not \{\}"):
        run_variant(tmp_path / "base", tmp_path / "sweep", "v", {})
    write_json(tmp_path / "kept/v.json", _variant("v", [0.7] * 4), overwrite=True)  # another run of that name
    with pytest.raises(FileExistsError, match="kept/v.json holds another run named 'v'.*not overwritten"):
        run_variant(tmp_path / "base", tmp_path / "sweep", "v", lr, summaries=tmp_path / "kept")
    assert read_json(tmp_path / "kept/v.json")["test"]["mean"]["dice"] == pytest.approx(0.7)


def test_a_variant_finished_before_per_study_dice_were_kept_gets_them_from_its_report(tmp_path):
    older = {k: v for k, v in _variant("v", [0.8] * 4).items() if k != "studies"}
    write_json(tmp_path / "sweep/v/sweep_run.json", older)
    study = {"bolus": {"dice": 0.9, "iou": 0.8}, "hyoid": {"dice": 0.5, "iou": 0.4}}
    report = {"num_frames": 24, "rows": [{"task": "mean", "dice": 0.7, "dice_present": 0.7, "fp_rate": None}],
              "studies": {"s07": study}}  # fmt: skip
    write_json(tmp_path / "sweep/v/eval/report.json", report)
    summary = run_variant(tmp_path / "base", tmp_path / "sweep", "v", {"seg_lr": 0.008})
    assert summary["studies"] == {"s07": {"bolus": 0.9, "hyoid": 0.5}}


def test_the_report_script_writes_the_table_and_curves(tmp_path):
    reference = ROOT / "docs/study/runs/default-e16-20-finetune-s0.json"
    better = {
        study: {"mean": values["mean"] + 0.01} for study, values in read_json(reference)["test"]["studies"].items()
    }
    write_json(tmp_path / "runs/lr8e-3.json", {**_variant("lr8e-3", [0.80, 0.82, 0.90, 0.84]), "studies": better})
    out = tmp_path / "budget"
    cmd = [sys.executable, "scripts/sweep.py", "report", "--runs", str(tmp_path / "runs"), "--out", str(out),
           "--study_runs", f"[{str(reference)!r}]"]  # fmt: skip
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    table = out.with_suffix(".md").read_text().splitlines()
    assert [row.split("|")[1].strip() for row in table[2:]] == ["default-e16-20-finetune-s0", "lr8e-3"]
    assert table[3].split("|")[5].strip() == "+0.0100 [+0.0100, +0.0100]"
    assert out.with_suffix(".png").stat().st_size > 10_000
    empty = subprocess.run([sys.executable, "scripts/sweep.py", "report", "--runs", str(tmp_path / "none")], cwd=ROOT,
                           capture_output=True, text=True)  # fmt: skip
    assert empty.returncode != 0 and "no variant summary" in empty.stderr
