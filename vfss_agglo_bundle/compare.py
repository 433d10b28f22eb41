"""Compare teacher sets on the same data, seed and budget: one `training` run each, then a side-by-side table.

Each run is the real ``python -m monai.bundle run training`` in its own bundle root under ``out_dir/<name>/``;
the runs share one dataset and one teacher feature store (``out_dir/data``, ``out_dir/cache``), so a teacher is
computed once for all the sets that use it. Finished runs are skipped by the stages themselves, so an
interrupted comparison resumes.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from vfss_agglo_bundle.handlers.report import markdown_table
from vfss_agglo_bundle.utils.io import atomic_path, write_json, write_text

logger = logging.getLogger(__name__)

BUNDLE_ROOT = Path(__file__).resolve().parents[1]


def default_teacher_sets(teachers: Sequence[str]) -> dict[str, list[str]]:
    """Scratch, each teacher alone, and (with two or more) all together."""
    sets: dict[str, list[str]] = {"scratch": []}
    sets.update({name: [name] for name in teachers})
    if len(teachers) > 1:
        sets["+".join(teachers)] = list(teachers)
    return sets


def run_training(name: str, teachers: Sequence[str], out_dir: Path, overrides: Sequence[str]) -> dict:
    """One `training` run of ``teachers``; returns its test report."""
    root = out_dir / name
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        "configs/train.yaml",
        "--bundle_root",
        str(root),
        "--dataset_dir",
        str(out_dir / "data"),
        "--cache_dir",
        str(out_dir / "cache"),
        "--teachers",
        repr(list(teachers)),
        *overrides,
    ]
    logger.info("compare: %s -> %s", name, " ".join(cmd))
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "training.log", "a") as log:
        subprocess.run(
            cmd,
            cwd=BUNDLE_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            check=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    return json.loads((root / "eval/report.json").read_text())


def comparison_table(reports: Mapping[str, dict]) -> tuple[list[str], list[dict]]:
    """Rows ``{"task", <run name>: dice, ...}`` per task plus the mean; returns (run names, rows)."""
    names = list(reports)
    tasks = [row["task"] for row in next(iter(reports.values()))["rows"]]
    rows = []
    for i, task in enumerate(tasks):
        rows.append({"task": task, **{n: reports[n]["rows"][i]["dice"] for n in names}})
    return names, rows


def comparison_markdown(names: Sequence[str], rows: Sequence[dict]) -> str:
    """Dice per task and run as a Markdown table (best of each row in bold)."""
    lines = ["| task | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for row in rows:
        best = max(row[n] for n in names)
        cells = [f"**{row[n]:.4f}**" if row[n] == best else f"{row[n]:.4f}" for n in names]
        lines.append(f"| {row['task']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bar_chart(names: Sequence[str], rows: Sequence[dict], path: Path) -> None:
    """Grouped bars of per-task Dice, one colour per run, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.arange(len(rows))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(8, len(rows) * 0.9), 4))
    for i, name in enumerate(names):
        ax.bar(x + i * width - 0.4 + width / 2, [r[name] for r in rows], width, label=name)
    ax.set_xticks(x, [r["task"] for r in rows], rotation=45, ha="right")
    ax.set_ylabel("test Dice")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, ncol=min(len(names), 4))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path, suffix=".png", keep_old=True) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def compare(
    teacher_sets: Mapping[str, Sequence[str]], out_dir: str | os.PathLike, overrides: Sequence[str] = ()
) -> Path:
    """Train every teacher set and write ``compare.{json,md}`` and ``compare.png`` to ``out_dir``; returns the .md."""
    out_dir = Path(out_dir).resolve()
    reports = {name: run_training(name, teachers, out_dir, overrides) for name, teachers in teacher_sets.items()}
    names, rows = comparison_table(reports)
    write_json(
        out_dir / "compare.json",
        {
            "teacher_sets": {k: list(v) for k, v in teacher_sets.items()},
            "overrides": list(overrides),
            "dice": rows,
            "reports": {n: r["rows"] for n, r in reports.items()},
        },
        keep_old=True,
    )
    text = "Test Dice per task (`scripts/compare.py`)\n\n" + comparison_markdown(names, rows) + "\n"
    text += "".join(f"\n### {n}\n\n{markdown_table(reports[n]['rows'])}\n" for n in names)
    write_text(out_dir / "compare.md", text, keep_old=True)
    bar_chart(names, rows, out_dir / "compare.png")
    logger.info("comparison written to %s", out_dir / "compare.md")
    return out_dir / "compare.md"
