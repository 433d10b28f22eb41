"""The whole default run of a candidate default (a finetune arm of all 12 tasks and every label), timed from nothing:
a fresh phantom, a fresh teacher store, both stages and the test report, as a user's first `training` run does it.

The study picks the default teacher set and balancer among the arms whose whole run stays within the convergence
issue's bar (``BAR_MINUTES`` on 2 CPU cores); ``docs/study/default_runs.json`` keeps each arm's timing for the report.
Time with nothing else running: the entry records the load average at its start.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

from vfss_agglo_bundle.study.plan import STUDY_BASE, candidate_defaults, choose
from vfss_agglo_bundle.study.runner import (
    load_summaries,
    machine_description,
    override_words,
    package_versions,
    run_logged,
    summary_of,
)
from vfss_agglo_bundle.utils.io import read_json, write_json

__all__ = ["BAR_MINUTES", "time_default_run"]

logger = logging.getLogger(__name__)

BAR_MINUTES = 20.0


def time_default_run(
    arm: str,
    out: str | os.PathLike = "docs/study/default_runs.json",
    summaries: str | os.PathLike = "docs/study/runs",
    work_dir: str | os.PathLike = "eval/study/timing",
    seeds: Sequence[int] = (0, 1, 2),
    threads: int = 2,
    common: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run ``arm``'s whole `training` run (seed ``seeds[0]``) in a fresh folder under ``work_dir``, record its wall and
    CPU minutes and test mean Dice under ``arm`` in ``out`` (other arms' entries kept); returns the entry. The folder
    is removed after a run that finished and kept, with its log, after one that failed. ``common``: overrides added
    to the arm's (none for the study's timings; a tiny dataset in tests), recorded in the entry."""
    candidates = candidate_defaults(seeds, choose(load_summaries(summaries), seeds))
    if arm not in candidates:
        raise ValueError(f"{arm!r} is not a candidate default the study plans now; candidates: {sorted(candidates)}.")
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix=f"{arm}-", dir=work_dir)).resolve()
    words = ["--bundle_root", str(root), "--dataset_dir", str(root / "data"), "--cache_dir", str(root / "cache"),
             "--seed", str(seeds[0]), *override_words({**STUDY_BASE, **candidates[arm], **(common or {})})]  # fmt: skip
    load = os.getloadavg()[0]
    logger.info("timing the whole default run of %s in %s (load average %.2f)", arm, root, load)
    started = time.monotonic()
    cpu = run_logged([sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "configs/train.yaml",
                      *words], root / "training.log", threads)  # fmt: skip
    wall = time.monotonic() - started
    entry = {
        "overrides": candidates[arm],
        "common": dict(common or {}),
        "seed": seeds[0],
        "wall_minutes": round(wall / 60, 2),
        "cpu_minutes": round(cpu / 60, 2),
        "load_average_at_start": round(load, 2),
        "test_mean_dice": summary_of(read_json(root / "eval" / "report.json"))["tasks"]["mean"]["dice"],
        "date": date.today().isoformat(),
        "machine": machine_description(threads),
        "versions": package_versions(),
    }
    table = read_json(out) if Path(out).is_file() else {}
    write_json(out, {**table, arm: entry}, overwrite=True)
    shutil.rmtree(root)
    logger.info("%s: whole default run %.1f min wall, %.1f CPU min", arm, entry["wall_minutes"], entry["cpu_minutes"])
    return entry
