"""Writes the 12-task evaluation report (CSV, JSON, Markdown) and best/worst overlay pictures per task."""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from vfss_agglo_bundle.metrics.multitask import METRICS, segmentation_scores
from vfss_agglo_bundle.utils.distributed import is_main_process
from vfss_agglo_bundle.utils.io import write_json, write_text
from vfss_agglo_bundle.visualize import contact_sheet, overlay, save_png, task_colours

logger = logging.getLogger(__name__)

EMPTY_POLICY = (
    "per frame and task: both masks empty -> Dice 1, IoU 1, HD95 0; exactly one empty -> Dice 0, IoU 0, "
    "HD95 = image diagonal (pixels); averaged over frames, then over tasks for the mean. Dice (present): over the "
    "frames whose label has the structure; FP rate (absent): share of the frames without it that have a prediction"
)
COLUMNS: tuple[str, ...] = ("dice", "dice_present", "fp_rate", "iou", "hd95")
HEADERS = {"dice": "Dice", "dice_present": "Dice (present)", "fp_rate": "FP rate (absent)", "iou": "IoU",
           "hd95": "HD95 (px)"}  # fmt: skip


class MultiTaskReport:
    """Attach to a MONAI evaluator whose step output holds ``image``, ``pred`` (binary) and ``label`` per frame.

    At the end of the run it writes ``<output_dir>/report.{json,csv,md}`` from ``engine.state.metrics[metric_name]``
    (a :class:`~vfss_agglo_bundle.metrics.MultiTaskSegMetrics` with ``reduce="all"``: per task Dice, Dice over the
    frames where the structure is present, false-positive rate on the frames where it is absent, IoU, HD95) and, per
    task, ``overlays/<task>_best.png`` and ``<task>_worst.png`` (label | prediction) among frames where the task is
    present in the label or the prediction. When the metric keeps its per-frame scores (``keep_frames``), the JSON
    also holds each study's means (``"studies"``; a frame's study is its ``study`` key, else its image's folder).
    Earlier reports are kept under a timestamped name.

    Args:
        output_dir: report folder.
        tasks: task names.
        metric_name: name of the per-task metric in ``engine.state.metrics``.
        overlays: write the best/worst pictures.
    """

    def __init__(
        self, output_dir: str, tasks: Sequence[str], metric_name: str = "multitask", overlays: bool = True
    ) -> None:
        self.output_dir = Path(output_dir)
        self.tasks = list(tasks)
        self.metric_name = metric_name
        self.overlays = overlays
        self._best: dict[int, tuple] = {}
        self._worst: dict[int, tuple] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._track)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self._best, self._worst, self._frames, self._studies = {}, {}, 0, []

    def _track(self, engine: Engine) -> None:
        outputs = engine.state.output
        batch = engine.state.batch if isinstance(engine.state.batch, list) else [{}] * len(outputs)
        self._frames += len(outputs)
        self._studies += [str(d.get("study") or Path(str(d.get("image_path", "?/frame"))).parent.name) for d in batch]
        if not self.overlays:
            return
        for item, data in zip(outputs, batch, strict=True):
            pred, label = item["pred"].detach().cpu(), item["label"].detach().cpu()
            dice = segmentation_scores(pred[None], label[None], hd95=False)["dice"][0]
            name = Path(str(data.get("image_path", "frame"))).as_posix().split("/")[-2:]
            for t in range(len(self.tasks)):
                if not (pred[t].any() or label[t].any()):
                    continue
                record = (float(dice[t]), "/".join(name), item["image"].detach().cpu(), label[t], pred[t])
                if t not in self._best or record[0] > self._best[t][0]:
                    self._best[t] = record
                if t not in self._worst or record[0] < self._worst[t][0]:
                    self._worst[t] = record

    def _write(self, engine: Engine) -> None:
        if not is_main_process():
            return
        metrics = engine.state.metrics[self.metric_name]
        rows = [{"task": t, **{m: metrics[f"{m}_{t}"] for m in COLUMNS if f"{m}_{t}" in metrics}} for t in self.tasks]
        rows.append({"task": "mean", **{m: metrics[f"mean_{m}"] for m in COLUMNS if f"mean_{m}" in metrics}})
        self.output_dir.mkdir(parents=True, exist_ok=True)
        report = {"num_frames": self._frames, "tasks": self.tasks, "rows": _finite(rows), "empty_masks": EMPTY_POLICY}
        if "per_frame" in metrics:
            report["studies"] = study_means(metrics["per_frame"], self._studies, self.tasks)
        write_json(self.output_dir / "report.json", report, keep_old=True)
        write_text(self.output_dir / "report.csv", _csv(rows), keep_old=True)
        write_text(
            self.output_dir / "report.md", markdown_table(rows) + f"\n\nEmpty masks: {EMPTY_POLICY}.\n", keep_old=True
        )
        if self.overlays:
            self._write_overlays()
        logger.info(
            "12-task report (%d tasks, mean Dice %.4f) written to %s",
            len(self.tasks),
            rows[-1].get("dice", float("nan")),
            self.output_dir,
        )

    def _write_overlays(self) -> None:
        folder = self.output_dir / "overlays"
        for which, records in (("best", self._best), ("worst", self._worst)):
            for t, (dice, name, image, label, pred) in records.items():
                grey = image[0].numpy()
                colour = task_colours(len(self.tasks))[t : t + 1]
                tiles = [overlay(grey, mask[None].numpy(), colours=colour) for mask in (label, pred)]
                titles = [f"{self.tasks[t]} label {name}", f"prediction Dice {dice:.3f}"]
                save_png(folder / f"{self.tasks[t]}_{which}.png", contact_sheet(tiles, titles, cols=2), keep_old=True)


def _finite(value: Any) -> Any:
    """``nan`` -> ``None`` (valid JSON), in nested rows."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def study_means(per_frame: dict[str, torch.Tensor], studies: Sequence[str], tasks: Sequence[str]) -> dict:
    """``{study: {task or "mean": {metric: value}}}`` from per-frame scores ``{metric: [N, T]}`` (with ``present``
    and ``predicted`` flags); ``None`` where a study has no frame to average (no present / absent frame)."""
    if len(studies) != len(per_frame["dice"]):
        raise ValueError(f"{len(studies)} study ids for {len(per_frame['dice'])} scored frames.")
    result = {}
    for study in sorted(set(studies)):
        rows = torch.tensor([s == study for s in studies])
        present, predicted = per_frame["present"][rows], per_frame["predicted"][rows]
        values = {m: per_frame[m][rows].double().mean(0) for m in METRICS if m in per_frame}
        values["dice_present"] = (per_frame["dice"][rows] * present).sum(0) / present.sum(0)
        values["fp_rate"] = (predicted & ~present).sum(0) / (~present).sum(0)
        table = {t: {m: float(v[i]) for m, v in values.items()} for i, t in enumerate(tasks)}
        table["mean"] = {m: float(v.nanmean()) for m, v in values.items()}
        result[study] = _finite(table)
    return result


def markdown_table(rows: Sequence[dict]) -> str:
    """Rows of ``{"task", <metric>: value}`` (the report's columns) as a Markdown table; a missing value is ``-``."""
    cols = [m for m in COLUMNS if m in rows[0]]
    lines = ["| task | " + " | ".join(HEADERS[c] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for row in rows:
        cells = ["-" if row[c] is None or math.isnan(row[c]) else f"{row[c]:.2f}" if c == "hd95" else f"{row[c]:.4f}"
                 for c in cols]  # fmt: skip
        task = f"**{row['task']}**" if row["task"] == "mean" else row["task"]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _csv(rows: Sequence[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
