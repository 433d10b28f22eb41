"""Stage-2 schedule sweep: variants of a finished `training` run's stage 2 (learning rate, epochs, batch size), their
validation curves, test Dice and time, to choose the default schedule by measurement.

Each variant is a real `training` run in ``<out_dir>/<name>/`` that shares the base run's dataset and teacher store
(``--dataset_dir``, ``--cache_dir``) and starts from its distilled encoder: the base run's stage-1 outputs are copied
in, and stage 1 skips itself because its fingerprint does not depend on stage-2 settings. A finished variant leaves
``sweep_run.json`` and is not run again, so a sweep can be interrupted and resumed; with ``summaries`` a copy of it
goes to ``<summaries>/<name>.json`` (commit it: the report is rebuilt from those files alone).

The report can set the variants against study runs on the same distilled encoder (``docs/study/runs/*.json``, e.g.
the default run and its stage 2 doubled): the first of them is the reference of a paired difference of test mean
Dice over the test studies, with its 95% bootstrap interval (one seed: studies are the only resampled unit).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from vfss_agglo_bundle.study.plan import CONVERGENCE_ARMS, DEFAULT_OVERRIDES, DEFAULT_RUN_ARM
from vfss_agglo_bundle.study.report import bootstrap_difference
from vfss_agglo_bundle.study.runner import override_words, run_logged, summary_of
from vfss_agglo_bundle.utils.io import atomic_path, read_json, write_json, write_text

__all__ = [
    "from_study_run",
    "paired_difference",
    "read_curve",
    "run_variant",
    "sweep_markdown",
    "write_sweep_plot",
    "write_sweep_report",
]

DEFAULT_RUN = {**DEFAULT_OVERRIDES, **CONVERGENCE_ARMS[DEFAULT_RUN_ARM]}  # the default run's settings, said or not
STAGE1_OUTPUTS = ("student_encoder.pt", "distillation.done.json")


def read_curve(log_dir: str | os.PathLike, tag: str = "val_mean_dice") -> list[tuple[int, float]]:
    """``(epoch, value)`` of ``tag`` from a run's TensorBoard logs (``logs/segmentation``), in epoch order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    if tag not in events.Tags()["scalars"]:
        return []
    return sorted((int(s.step), float(s.value)) for s in events.Scalars(tag))


def run_variant(
    base: str | os.PathLike,
    out_dir: str | os.PathLike,
    name: str,
    overrides: Mapping[str, Any],
    threads: int = 2,
    summaries: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Run (or read back) one stage-2 variant of the finished run in bundle folder ``base``; returns its summary:
    ``overrides``, ``val_curve`` [(epoch, val mean Dice)], ``best_val``, ``test`` (task or ``mean`` -> its row of
    ``eval/report.json``), ``studies`` (test study -> task -> Dice), ``stage1_fingerprint`` (the distilled encoder
    it started from), ``stage2_seconds`` (wall time of the run, stage 1 skipped) and ``threads``; also written to
    ``<summaries>/<name>.json`` when ``summaries`` is given."""
    base, root = Path(base), Path(out_dir) / name
    done = root / "sweep_run.json"
    if done.exists():
        summary = read_json(done)
        if summary["overrides"] != dict(overrides):
            raise ValueError(f"{done} is variant {name!r} with overrides {summary['overrides']}, not "
                             f"{dict(overrides)}: give this variant another --name, or move that folder away to run "
                             "it again.")  # fmt: skip
        if "studies" not in summary:  # written before the sweep kept per-study Dice
            summary["studies"] = summary_of(read_json(root / "eval/report.json"))["studies"]
        _keep(summary, summaries)
        return summary
    missing = [n for n in STAGE1_OUTPUTS if not (base / "models" / n).exists()]
    if missing:
        raise FileNotFoundError(f"{base}/models has no {missing}: run `training` there first (the sweep's base).")
    (root / "models").mkdir(parents=True, exist_ok=True)
    for n in STAGE1_OUTPUTS:
        shutil.copy2(base / "models" / n, root / "models" / n)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "configs/train.yaml",
           "--bundle_root", str(root), "--dataset_dir", str(base / "data/phantom"), "--cache_dir",
           str(base / "cache/teachers"), *override_words(overrides)]  # fmt: skip
    started = time.time()
    run_logged(cmd, root / "training.log", threads)
    curve = read_curve(root / "logs/segmentation")
    report = read_json(root / "eval/report.json")
    summary = {
        "name": name,
        "overrides": dict(overrides),
        "val_curve": curve,
        "best_val": max((v for _, v in curve), default=None),
        "test": {row["task"]: row for row in report["rows"]},
        "studies": summary_of(report)["studies"],
        "stage1_fingerprint": read_json(root / "models" / "distillation.done.json")["fingerprint"],
        "stage2_seconds": time.time() - started,
        "threads": threads,
    }
    write_json(done, summary)
    _keep(summary, summaries)
    return summary


def _keep(summary: Mapping[str, Any], summaries: str | os.PathLike | None) -> None:
    """Copy ``summary`` to ``<summaries>/<name>.json``; one already there must be the same summary."""
    if summaries is None:
        return
    path = Path(summaries) / f"{summary['name']}.json"
    if path.exists():
        if read_json(path) != json.loads(json.dumps(summary)):
            raise FileExistsError(f"{path} holds another run named {summary['name']!r}: move it away or rename the "
                                  "variant; it is not overwritten.")  # fmt: skip
        return
    write_json(path, summary)


def from_study_run(run: Mapping[str, Any]) -> dict[str, Any]:
    """A study run's summary (``docs/study/runs/<run>.json``) in a sweep variant's shape, for the report: its
    overrides (those that differ from the default run's), validation curve, test rows and per-study Dice
    (``stage2_seconds`` None: the study times whole runs)."""
    curve = sorted((int(epoch), float(value)) for epoch, value in run["validation_curve"].items())
    return {
        "name": run["run"],
        "overrides": {k: v for k, v in run["overrides"].items() if DEFAULT_RUN.get(k, object()) != v},
        "val_curve": curve,
        "best_val": max((v for _, v in curve), default=None),
        "test": dict(run["test"]["tasks"]),
        "studies": dict(run["test"]["studies"]),
        "stage2_seconds": None,
        "threads": None,
    }


def paired_difference(a: Mapping[str, Any], b: Mapping[str, Any], task: str = "mean") -> tuple[float, float, float]:
    """Test Dice of ``task``, ``a - b`` paired by test study: (mean, 2.5%, 97.5%) of its bootstrap over studies."""
    studies = sorted(set(a["studies"]) & set(b["studies"]))
    if not studies:
        raise ValueError(f"{a['name']} and {b['name']} share no test study: were they evaluated on the same split?")
    values = np.array([[a["studies"][s][task] - b["studies"][s][task] for s in studies]])
    return bootstrap_difference(values)


def sweep_markdown(runs: Sequence[Mapping[str, Any]], reference: Mapping[str, Any] | None = None) -> str:
    """Table of the runs: overrides, best validation mean Dice (epoch), test mean Dice, its paired difference from
    ``reference`` with the 95% interval, the hyoid's and epiglottis' test Dice, the weakest task and stage-2 time."""
    lines = ["| run | overrides | best val mean Dice (epoch) | test mean Dice | vs reference [95% CI] | hyoid | "
             "epiglottis | weakest test task | stage 2 min |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for run in runs:
        best_epoch, best = max(run["val_curve"], key=lambda point: point[1])
        dice = {t: row["dice"] for t, row in run["test"].items() if t != "mean"}
        weakest = min(dice, key=dice.get)
        overrides = ", ".join(f"{k}={v}" for k, v in run["overrides"].items()) or "-"
        versus = "-"
        if reference is not None and run is not reference and run["name"] != reference["name"]:
            mean, low, high = paired_difference(run, reference)
            versus = f"{mean:+.4f} [{low:+.4f}, {high:+.4f}]"
        minutes = "-" if run["stage2_seconds"] is None else f"{run['stage2_seconds'] / 60:.1f}"
        small = " | ".join(f"{dice[t]:.3f}" if t in dice else "-" for t in ("hyoid", "epiglottis"))
        lines.append(f"| {run['name']} | {overrides} | {best:.4f} ({best_epoch}) | {run['test']['mean']['dice']:.4f} "
                     f"| {versus} | {small} | {weakest} {dice[weakest]:.3f} | {minutes} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def write_sweep_plot(runs: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> None:
    """Validation mean Dice against epoch, one line per variant, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for run in runs:
        epochs, values = zip(*run["val_curve"], strict=True)
        study_run = run["stage2_seconds"] is None  # a study run set beside the variants: dashed
        ax.plot(epochs, values, marker="o", linestyle="--" if study_run else "-", label=run["name"])
    ax.set_xlabel("stage-2 epoch")
    ax.set_ylabel("validation mean Dice")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png", overwrite=True) as tmp:
        fig.savefig(tmp, dpi=110, metadata={"Software": None})
    plt.close(fig)


def write_sweep_report(
    runs: Sequence[Mapping[str, Any]], out: str | os.PathLike, reference: Mapping[str, Any] | None = None
) -> tuple[Path, Path]:
    """``<out>.md`` (the table) and ``<out>.png`` (the curves); returns both paths."""
    out = Path(out)
    write_sweep_plot(runs, out.with_suffix(".png"))
    write_text(out.with_suffix(".md"), sweep_markdown(runs, reference), overwrite=True)
    return out.with_suffix(".md"), out.with_suffix(".png")
