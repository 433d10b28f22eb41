"""Stage-2 schedule sweep: variants of a finished `training` run's stage 2 (learning rate, epochs, batch size), their
validation curves, test Dice and time, to choose the default schedule by measurement.

Each variant is a real `training` run in ``<out_dir>/<name>/`` that shares the base run's dataset and teacher store
(``--dataset_dir``, ``--cache_dir``) and starts from its distilled encoder: the base run's stage-1 outputs are copied
in, and stage 1 skips itself because its fingerprint does not depend on stage-2 settings. A finished variant leaves
``sweep_run.json`` and is not run again, so a sweep can be interrupted and resumed.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vfss_agglo_bundle.study.runner import override_words, run_logged
from vfss_agglo_bundle.utils.io import read_json, write_json, write_text

__all__ = ["read_curve", "run_variant", "sweep_markdown", "write_sweep_plot", "write_sweep_report"]

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
    base: str | os.PathLike, out_dir: str | os.PathLike, name: str, overrides: Mapping[str, Any], threads: int = 2
) -> dict[str, Any]:
    """Run (or read back) one stage-2 variant of the finished run in bundle folder ``base``; returns its summary:
    ``overrides``, ``val_curve`` [(epoch, val mean Dice)], ``best_val``, ``test`` (task or ``mean`` -> its row of
    ``eval/report.json``), ``stage2_seconds`` (wall time of the run, stage 1 skipped) and ``threads``."""
    base, root = Path(base), Path(out_dir) / name
    done = root / "sweep_run.json"
    if done.exists():
        return read_json(done)
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
        "stage2_seconds": time.time() - started,
        "threads": threads,
    }
    write_json(done, summary)
    return summary


def sweep_markdown(runs: Sequence[Mapping[str, Any]]) -> str:
    """Table of the variants: overrides, best validation mean Dice (epoch), test mean Dice and weakest task, time."""
    lines = ["| variant | overrides | best val mean Dice (epoch) | test mean Dice | weakest test task | stage 2 min |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for run in runs:
        best_epoch, best = max(run["val_curve"], key=lambda point: point[1])
        dice = {t: row["dice"] for t, row in run["test"].items() if t != "mean"}
        weakest = min(dice, key=dice.get)
        overrides = ", ".join(f"{k}={v}" for k, v in run["overrides"].items())
        lines.append(f"| {run['name']} | {overrides} | {best:.4f} ({best_epoch}) | {run['test']['mean']['dice']:.4f} | "
                     f"{weakest} {dice[weakest]:.3f} | {run['stage2_seconds'] / 60:.1f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def write_sweep_plot(runs: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> None:
    """Validation mean Dice against epoch, one line per variant, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for run in runs:
        epochs, values = zip(*run["val_curve"], strict=True)
        ax.plot(epochs, values, marker="o", label=run["name"])
    ax.set_xlabel("stage-2 epoch")
    ax.set_ylabel("validation mean Dice")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_sweep_report(runs: Sequence[Mapping[str, Any]], out: str | os.PathLike) -> tuple[Path, Path]:
    """``<out>.md`` (the table) and ``<out>.png`` (the curves); returns both paths."""
    out = Path(out)
    write_sweep_plot(runs, out.with_suffix(".png"))
    write_text(out.with_suffix(".md"), sweep_markdown(runs))
    return out.with_suffix(".md"), out.with_suffix(".png")
