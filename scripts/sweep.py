"""Stage-2 schedule and budget sweep on a finished `training` run (its data, teacher store and distilled encoder
are reused).

    python scripts/sweep.py run --base . --out_dir eval/sweep --name lr8e-3 --overrides "{'seg_lr': 0.008}" \
        --summaries docs/budget_sweep/runs
    python scripts/sweep.py report --runs docs/budget_sweep/runs --out docs/budget_sweep \
        --study_runs "['docs/study/runs/default-e16-20-finetune-s0.json']"

`run` trains one variant in <out_dir>/<name>/ (skipped when its sweep_run.json exists) and copies its summary to
<summaries>/<name>.json; `report` writes <out>.md (a table of every variant, and of the study runs named, the first
of them the reference of the paired differences) and <out>.png (their validation curves).
"""

from __future__ import annotations

from pathlib import Path

import fire
from vfss_agglo_bundle.sweep import from_study_run, run_variant, write_sweep_report
from vfss_agglo_bundle.utils.io import read_json


def run(
    base: str, out_dir: str, name: str, overrides: dict | None = None, threads: int = 2, summaries: str | None = None
) -> None:
    """Train one stage-2 variant of the run in bundle folder ``base``; prints its best validation and test Dice."""
    summary = run_variant(base, out_dir, name, overrides or {}, threads, summaries)
    print(f"{name}: best val mean Dice {summary['best_val']:.4f}, test {summary['test']['mean']['dice']:.4f}")


def report(runs: str = "docs/budget_sweep/runs", out: str = "docs/budget_sweep", study_runs: tuple = ()) -> None:
    """Table and curves of every variant summary in ``runs`` (``*.json``), after the study runs named (the first of
    them is the reference of the paired differences)."""
    variants = [read_json(p) for p in sorted(Path(runs).glob("*.json"))]
    if not variants:
        raise FileNotFoundError(f"no variant summary (*.json) in {runs}: `run` one with --summaries {runs} first.")
    studied = [from_study_run(read_json(p)) for p in study_runs]
    md, png = write_sweep_report([*studied, *variants], out, reference=studied[0] if studied else None)
    print(md.read_text())
    print(f"wrote {md} and {png}")


if __name__ == "__main__":
    fire.Fire({"run": run, "report": report})
