"""Compare teacher sets with the same data, seed and training budget.

    python scripts/compare.py                                   # scratch vs litemedsam
    python scripts/compare.py --teachers "['medsam','rad_dino','medclip']" --teacher_dir /weights
    python scripts/compare.py --sets "{'scratch': [], 'sam+dino': ['medsam','rad_dino']}" \
        --overrides "['--seg_epochs','20']"

Writes eval/compare/compare.{md,json,png}; `--overrides` (a list of command-line words) goes to every run.
"""

from __future__ import annotations

import logging

import fire
from vfss_agglo_bundle.compare import compare, default_teacher_sets


def main(
    teachers: list = ("litemedsam",),
    sets: dict | None = None,
    teacher_dir: str | None = None,
    out_dir: str = "eval/compare",
    overrides: list = (),
) -> str:
    """Train scratch, each teacher alone and all together (or the given ``sets``); print the table path."""
    teacher_sets = sets if sets is not None else default_teacher_sets(list(teachers))
    extra = [str(o) for o in overrides] + (["--teacher_dir", teacher_dir] if teacher_dir else [])
    return str(compare(teacher_sets, out_dir, extra))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    fire.Fire(main)
