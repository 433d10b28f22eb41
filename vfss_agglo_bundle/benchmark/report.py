"""The benchmark report as Markdown, and writing it with its JSON."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vfss_agglo_bundle.benchmark.measure import MIN_RUNS
from vfss_agglo_bundle.benchmark.targets import FULL_RANDOM, TINY
from vfss_agglo_bundle.utils.io import write_json, write_text

__all__ = ["to_markdown", "write_report"]


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _ratio(value: float) -> str:
    return f"{value:,.0f}x" if value >= 10 else f"{value:.1f}x"


def to_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: machine, settings, the main table, batch-1 speed ratios and notes."""
    m, s = report["machine"], report["settings"]
    gpus = ", ".join(m["gpus"]) or "no GPU"
    lines = [
        "# Speed benchmark",
        "",
        f"Machine: {m['cpu']}, {m['usable_cores']} usable cores ({m['logical_cores']} logical), {gpus}; torch "
        f"{m['torch']} ({s['threads']} threads; OpenMP environment {m['openmp_env'] or 'default'}), timm "
        f"{m['timm']}, onnxruntime {m['onnxruntime']}, Python {m['python']}. Load average at the start: "
        f"{m['load_average']}.",
        "",
        f"Run {report['started']} to {report['finished']}; image {s['image_size']}x{s['image_size']}, "
        f"{s['num_classes']} classes; warm-up {s['warmup']} calls, then up to {s['repeats']} timed calls "
        f"(at least {MIN_RUNS}, stopping after {s['max_seconds']:g} s).",
        "",
    ]
    batches = s["batches"]
    header = ["model", "kind", "weights", "device", "input", "params (M)", "GFLOPs/frame"]
    for b in batches:
        header += [f"b{b} median ms", f"b{b} p90 ms", f"b{b} frames/s", f"b{b} peak MiB"]
    header.append("note")
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for e in report["entries"]:
        params, gflops = _fmt(e["params"] / 1e6, 2), _fmt(e["gflops_per_frame"], 2)
        row = [e["name"], e["group"], e["weights"], e["device"], e["input"], params, gflops]
        for b in batches:
            meas = next((x for x in e["measurements"] if x["batch"] == b), None)
            if meas is None:
                row += ["-"] * 4
            else:
                row += [_fmt(meas[k]) for k in ("median_ms", "p90_ms", "frames_per_s")]
                row.append(_fmt(meas["peak_memory_mib"], 0))
        row.append(e["note"])
        lines.append("| " + " | ".join(row) + " |")
    weights = {e["name"]: e["weights"] for e in report["entries"] if e["group"] == "teacher"}
    for device, table in report["ratios_batch1"].items():
        teachers = list(dict.fromkeys(t for row in table.values() for t in row))
        if not teachers:
            continue
        lines += ["", f"## How many times faster than each teacher (batch 1, median latency, {device})", ""]
        lines.append("| student | " + " | ".join(f"{t} ({weights.get(t, '?')})" for t in teachers) + " |")
        lines.append("|" + "---|" * (len(teachers) + 1))
        for student, row in table.items():
            lines.append(f"| {student} | " + " | ".join(_ratio(row[t]) if t in row else "-" for t in teachers) + " |")
    lines += [
        "",
        "Notes:",
        f"- `{TINY}`: the tiny test preset with random weights, much smaller than the real teacher; its speed says "
        "nothing about the real one. Use `--full_size_random` (and `--include_medsam`) or real weights under "
        "`--teacher_dir` for real speed ratios.",
        f"- `{FULL_RANDOM}`: the real architecture with random weights; its speed is the real one (speed does not "
        "depend on weight values), its outputs are noise.",
        "- Teacher rows time the whole teacher forward on the canonical frame, including its own resize and "
        "normalisation to the input shown.",
        "- GFLOPs: torch FlopCounterMode (matmul, conv, attention; 1 multiply-add = 2 FLOPs); for a distillation "
        "step they include the backward pass. ONNX Runtime rows have none.",
        "- Peak MiB: memory a call needs beyond the loaded model, from the first call on. CPU: rise of the process "
        "resident-set high-water mark (a lower bound: memory the allocator kept from an earlier batch size is not "
        "counted again); GPU: torch.cuda.max_memory_allocated above what was allocated before.",
        "- Shared machine: absolute timings swing 2-3x between runs; compare ratios measured in one run.",
    ]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out_dir: str | os.PathLike, stem: str = "benchmark") -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.md`` under ``out_dir`` (Markdown from ``report["markdown"]`` when present,
    else :func:`to_markdown`), first renaming previous ones with their timestamp. Returns both paths."""
    out_dir = Path(out_dir)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    markdown = report.get("markdown") or to_markdown(report)
    write_json(json_path, {k: v for k, v in report.items() if k != "markdown"}, keep_old=True)
    write_text(md_path, markdown, keep_old=True)
    return json_path, md_path
