"""The paper's experiment: scratch vs one teacher vs two, the loss balancers, specialists; seeds and error bars.

    python scripts/study.py                                  # litemedsam / hog / both, 3 seeds, default budget
    python scripts/study.py --budget half --jobs 2           # half the epochs, two runs at a time (1 thread each)
    python scripts/study.py --sets "{'paper': ['medsam','rad_dino','medclip']}" --overrides "['--teacher_dir','/w']"

Writes <out_dir>/study.{md,json,png} (and keeps the runs under <out_dir>/runs/); run it again to resume.
"""

from __future__ import annotations

import logging

import fire
from vfss_agglo_bundle.study import SPECIALIST_TASKS, run_study


def main(
    out_dir: str = "eval/study",
    seeds: tuple = (0, 1, 2),
    budget: str = "full",
    teachers: tuple = ("litemedsam", "hog"),
    sets: dict | None = None,
    specialists: tuple = SPECIALIST_TASKS,
    overrides: tuple = (),
    jobs: int = 1,
    device: str | None = None,
) -> str:
    """Run or resume the study; prints where the report is."""
    run_study(out_dir, list(seeds), budget, list(teachers), sets, list(specialists), [str(o) for o in overrides],
              jobs, device)  # fmt: skip
    return f"{out_dir}/study.md"


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    fire.Fire(main)
