"""Stage-2 schedule sweep on a finished `training` run (its data, teacher store and distilled encoder are reused).

    python scripts/sweep.py run --base . --out_dir eval/sweep --name lr4e-3 --overrides "{'seg_lr': 0.004}"
    python scripts/sweep.py report --out_dir eval/sweep --out docs/schedule_sweep

`run` trains one variant in <out_dir>/<name>/ (skipped when its sweep_run.json exists); `report` writes <out>.md (a
table of every variant in <out_dir>) and <out>.png (their validation curves).
"""

from __future__ import annotations

from pathlib import Path

import fire
from vfss_agglo_bundle.sweep import run_variant, write_sweep_report
from vfss_agglo_bundle.utils.io import read_json


def run(base: str, out_dir: str, name: str, overrides: dict | None = None, threads: int = 2) -> None:
    """Train one stage-2 variant of the run in bundle folder ``base``; prints its best validation and test Dice."""
    summary = run_variant(base, out_dir, name, overrides or {}, threads)
    print(f"{name}: best val mean Dice {summary['best_val']:.4f}, test {summary['test']['mean']['dice']:.4f}")


def report(out_dir: str, out: str = "docs/schedule_sweep") -> None:
    """Table and curves of every finished variant under ``out_dir``."""
    runs = [read_json(p) for p in sorted(Path(out_dir).glob("*/sweep_run.json"))]
    if not runs:
        raise FileNotFoundError(f"no finished variant (*/sweep_run.json) under {out_dir}")
    md, png = write_sweep_report(runs, out)
    print(md.read_text())
    print(f"wrote {md} and {png}")


if __name__ == "__main__":
    fire.Fire({"run": run, "report": report})
