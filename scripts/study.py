"""The study, at twice the default run's epochs: scratch, each teacher, four teachers, the balancers and PHI-S,
specialists and label efficiency, each under the frozen-encoder probe and/or fine-tuning, 3 seeds; resumable across
days and machines.

    python scripts/study.py run                          # every run still missing, in plan order (resumable)
    python scripts/study.py run --max_runs 4             # at most 4 runs now
    python scripts/study.py run --workers 2              # two runners side by side (2 cores: 1.3x in stage 2)
    python scripts/study.py run --only "['default-finetune']" --seeds "[0]"
    python scripts/study.py plan                         # the runs, done or not
    python scripts/study.py report                       # docs/study.md and docs/study.png from the summaries alone
    python scripts/study.py time --arm default           # a candidate default's whole run from nothing, timed

Each finished run writes docs/study/runs/<arm>-<protocol>-s<seed>.json (commit it); a run whose summary exists for
the same fingerprint (settings, seed, device type) is skipped. The runs themselves live under --work_dir.
"""

from __future__ import annotations

import logging

import fire
from vfss_agglo_bundle.study import choose, load_summaries, plan_runs
from vfss_agglo_bundle.study.runner import run_study_workers

SUMMARIES = "docs/study/runs"
TIMINGS = "docs/study/default_runs.json"


def run(
    work_dir: str = "eval/study",
    summaries: str = SUMMARIES,
    seeds: tuple = (0, 1, 2),
    device: str = "cpu",
    threads: int | None = None,
    only: tuple | None = None,
    max_runs: int | None = None,
    workers: int = 1,
) -> None:
    """Run (or resume) the study's missing runs, with ``workers`` runners of ``threads`` torch threads each (default:
    the cores shared out between them). Several runners, started here or by hand on the same work_dir, share the runs
    left; max_runs counts per runner."""
    done = run_study_workers(workers, work_dir=work_dir, summaries=summaries, seeds=seeds, device=device,
                             threads=threads, only=only, max_runs=max_runs)  # fmt: skip
    print(f"{len(done)} run(s) done now: {', '.join(done) or '-'}")


def plan(summaries: str = SUMMARIES, seeds: tuple = (0, 1, 2)) -> None:
    """Print every run the study plans now, and whether its summary exists."""
    finished = load_summaries(summaries)
    choices = choose(finished, list(seeds))
    print(choices)
    for r in plan_runs(list(seeds), choices):
        state = "done" if r.name in finished else "to do"
        print(f"{state:6s} {r.name:40s} {r.group:12s} {r.config_overrides()}")


def report(summaries: str = SUMMARIES, out: str = "docs/study.md", timings: str = TIMINGS) -> None:
    """Rebuild the study report and its figure from the run summaries and the candidate defaults' timings alone."""
    from vfss_agglo_bundle.study.report import write_report

    print(write_report(summaries, out, timings))


def time_run(arm: str, out: str = TIMINGS, summaries: str = SUMMARIES, work_dir: str = "eval/study/timing") -> None:
    """Time a candidate default's whole `training` run from nothing (run it with nothing else running)."""
    from vfss_agglo_bundle.study.timing import time_default_run

    entry = time_default_run(arm, out, summaries, work_dir)
    print(f"{arm}: {entry['wall_minutes']:.1f} min wall, {entry['cpu_minutes']:.1f} CPU min, test mean Dice "
          f"{entry['test_mean_dice']:.4f}; written to {out}")  # fmt: skip


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    fire.Fire({"run": run, "plan": plan, "report": report, "time": time_run})
