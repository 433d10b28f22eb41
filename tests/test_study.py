"""scripts/study.py: arms, paired bootstrap intervals, and a tiny end-to-end study on shared data."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT
from vfss_agglo_bundle.study import Arm, bootstrap_difference, phi_s_arm, plan_arms, summarise


def test_the_arms_of_the_study():
    arms = plan_arms(("litemedsam", "hog"), extra_sets={"paper": ["medsam", "rad_dino", "medclip"]})
    names = [a.name for a in arms]
    assert names[:5] == ["scratch", "litemedsam", "hog", "litemedsam+hog", "paper"]
    assert [a.overrides["balancing"] for a in arms if a.group == "balancers"] == ["fixed", "uncertainty", "mlp"]
    specialists = [a for a in arms if a.group == "specialists"]
    assert [a.overrides["tasks"] for a in specialists] == [["bolus"], ["hyoid"], ["c4"]]
    assert all(a.stage1_from == "litemedsam+hog" for a in specialists)
    phi = phi_s_arm(arms, "mlp")
    assert phi.overrides == {"teachers": ["litemedsam", "hog"], "balancing": "mlp", "standardize": "phi_s"}
    with pytest.raises(ValueError, match="two teachers"):
        plan_arms(("litemedsam",))


def test_bootstrap_interval_of_paired_differences():
    mean, low, high = bootstrap_difference(np.full((3, 4), 0.02))
    assert mean == pytest.approx(0.02) and low == pytest.approx(0.02) and high == pytest.approx(0.02)
    noise = np.random.default_rng(0).normal(0.0, 0.05, (3, 4))
    mean, low, high = bootstrap_difference(noise)
    assert low < mean < high and low < 0 < high  # no effect: the interval straddles 0
    shifted = bootstrap_difference(noise + 0.2)
    assert shifted[1] > 0 and shifted[0] == pytest.approx(mean + 0.2)


def _result(arm: str, seed: int, study_dice: dict, validation: float) -> dict:
    mean = float(np.mean(list(study_dice.values())))
    rows = [{"task": "bolus", "dice": mean}, {"task": "mean", "dice": mean, "dice_present": mean, "fp_rate": 0.1}]
    studies = {s: {"mean": {"dice": d}, "bolus": {"dice": d}} for s, d in study_dice.items()}
    return {
        "arm": arm,
        "seed": seed,
        "cpu_seconds": 60.0,
        "test": {"rows": rows, "studies": studies},
        "validation": {"rows": [{"task": "mean", "dice": validation}]},
    }


def test_summary_pairs_arms_by_seed_and_study():
    arms = [
        Arm("scratch", "teachers", {"teachers": []}),
        Arm("a", "teachers", {"teachers": ["a"]}),
        Arm("b", "teachers", {"teachers": ["b"]}),
        Arm("a+b", "teachers", {"teachers": ["a", "b"]}),
    ]
    base = {"s1": 0.5, "s2": 0.6}
    results = {
        "scratch": [_result("scratch", s, base, 0.5) for s in (0, 1)],
        "a": [_result("a", s, {k: v + 0.01 for k, v in base.items()}, 0.52) for s in (0, 1)],
        "b": [_result("b", s, {k: v + 0.03 for k, v in base.items()}, 0.51) for s in (0, 1)],
        "a+b": [_result("a+b", s, {k: v + 0.05 for k, v in base.items()}, 0.55) for s in (0, 1)],
    }
    summary = summarise(results, arms, ["bolus"])
    assert summary["table"]["a+b"]["mean"] == pytest.approx(0.6) and summary["table"]["a+b"]["sd"] == 0.0
    comparisons = {(c["a"], c["b"]): c for c in summary["comparisons"]}
    assert comparisons[("b", "scratch")]["mean"] == pytest.approx(0.03)
    # the best single teacher is chosen on validation (a: 0.52), not on test (b would win there)
    assert comparisons[("a+b", "a")]["mean"] == pytest.approx(0.04) and ("a+b", "b") not in comparisons


@pytest.mark.slow
def test_a_tiny_study_runs_every_arm_on_shared_data(tmp_path):
    overrides = ["--phantom_studies", "5", "--phantom_frames", "2", "--phantom_test_frames", "2", "--image_size", "64",
                 "--teacher_preset", "tiny", "--distill_batch_size", "2", "--seg_batch_size", "2"]  # fmt: skip
    cmd = [sys.executable, "scripts/study.py", "--out_dir", str(tmp_path), "--seeds", "[0]", "--budget", "quick",
           "--teachers", "['medsam','hog']", "--specialists", "['c4']", "--overrides", repr(overrides)]  # fmt: skip
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    study = json.loads((tmp_path / "study.json").read_text())
    best = study["settings"]["best_balancer_by_validation"]
    assert set(study["table"]) == {
        "scratch",
        "medsam",
        "hog",
        "medsam+hog",
        "medsam+hog fixed",
        "medsam+hog uncertainty",
        "medsam+hog mlp",
        "c4 specialist",
        f"medsam+hog {best} + PHI-S",
    }
    assert (tmp_path / "cache").is_dir() and not list((tmp_path / "runs").rglob("cache"))  # one shared store
    specialist = tmp_path / "runs/c4_specialist/seed0/training.log"
    assert "stage distillation: outputs found" in specialist.read_text()  # the two-teacher stage 1, reused
    assert study["runs"]["c4 specialist"][0]["test"]["tasks"] == ["c4"]
    text = (tmp_path / "study.md").read_text()
    assert "95% bootstrap CI" in text and "## What the numbers support" in text
    assert (tmp_path / "study.png").stat().st_size > 5000
