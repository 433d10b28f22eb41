"""The files a video's kinematics are read from: ``<study>.csv`` (a row a frame), ``<study>.json`` (per swallow,
with QC flags and units) and ``<study>.png`` (the kinematics sheet). All written atomically, none overwritten."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
from vfss_agglo_bundle.utils.io import PathLike, atomic_path, write_json, write_text

__all__ = ["json_ready", "kinematics_sheet", "write_kinematics"]

# CSV columns first in this order, then the per-task areas and presences
CSV_SIGNALS = (
    "hyoid_x",
    "hyoid_y",
    "hyoid_displacement",
    "hyoid_speed",
    "pharynx_area",
    "bolus_in_pharynx",
    "bolus_head",
    "bolus_tail",
    "gonion_depth",
    "ues_depth",
    "ues_width",
    "bolus_below_ues",
    "bolus_at_ues",
    "epiglottis_angle",
    "length_px",
)
EVENT_COLOURS = {"BPM": "tab:brown", "HYB": "tab:green", "hyoid_peak": "tab:red", "UESO": "tab:blue",
                 "UESC": "tab:purple", "max_constriction": "tab:orange", "swallow_rest": "tab:gray"}  # fmt: skip


def json_ready(value: Any) -> Any:
    """``value`` with numpy scalars and arrays as Python numbers and lists, and NaN as ``None`` (valid JSON)."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_ready(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(value) else float(value)
    return value


def _csv_text(result: dict[str, Any]) -> str:
    frames = result["frames"]
    columns = [c for c in CSV_SIGNALS if c in frames] + sorted(c for c in frames if c not in CSV_SIGNALS)
    n = result["num_frames"]
    fps = result.get("fps")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["frame", "time_s" if fps else "time_frames", *columns])
    for i in range(n):
        row = [i, f"{i / fps:.4f}" if fps else i]
        for column in columns:
            value = frames[column][i]
            if isinstance(value, (bool, np.bool_)):
                row.append(int(value))
            elif value is None or (isinstance(value, float) and math.isnan(value)):
                row.append("")
            else:
                row.append(f"{value:.4g}" if isinstance(value, float) else value)
        writer.writerow(row)
    return buffer.getvalue()


def kinematics_sheet(result: dict[str, Any], title: str = "") -> np.ndarray:
    """The kinematics sheet, uint8 RGB ``[H, W, 3]``: the hyoid's path in the spine frame coloured by time, and
    hyoid displacement, pharyngeal area, bolus head and tail depth and epiglottis angle against time, with a
    line at each swallow event, and the swallows' measures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames, n, fps = result["frames"], result["num_frames"], result.get("fps")
    time = np.arange(n) / fps if fps else np.arange(n, dtype=float)
    unit = "s" if fps else "frames"
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.4), dpi=80)
    fig.suptitle(title or "swallow kinematics", fontsize=13)
    ax = axes[0, 0]
    if "hyoid_x" in frames:
        x, y = np.array(frames["hyoid_x"], float), np.array(frames["hyoid_y"], float)
        ax.plot(x, y, color="0.75", lw=1, zorder=1)
        points = ax.scatter(x, y, c=time, cmap="viridis", s=16, zorder=2)
        fig.colorbar(points, ax=ax, label=f"time ({unit})")
        ax.set_aspect("equal", adjustable="datalim")
    ax.set(title="hyoid path in the spine frame", xlabel="anterior (%C2-4)", ylabel="towards C2 (%C2-4)")
    panels = [
        (axes[0, 1], "hyoid displacement from rest", "%C2-4", ["hyoid_displacement"]),
        (axes[0, 2], "pharyngeal area (lumen with bolus)", "%C2-4$^2$", ["pharynx_area"]),
        (axes[1, 0], "bolus depth below C4 (head, tail)", "%C2-4", ["bolus_head", "bolus_tail", "ues_depth"]),
        (axes[1, 1], "epiglottis angle from the spine's up", "degrees", ["epiglottis_angle"]),
    ]
    for ax, name, ylabel, keys in panels:
        for key in keys:
            if key in frames:
                values = np.array([np.nan if v is None else v for v in frames[key]], float)
                style = {"ls": ":", "color": "0.4"} if key == "ues_depth" else {}
                ax.plot(time, values, marker=".", ms=3, label=key.replace("_", " "), **style)
        for swallow in result.get("swallows", []):
            for event, frame in swallow["events"].items():
                if frame is not None:
                    ax.axvline(time[frame], color=EVENT_COLOURS[event], lw=1, alpha=0.8)
        if sum(key in frames for key in keys) > 1:
            ax.legend(fontsize=8, loc="best")
        if keys[0] == "bolus_head":
            ax.invert_yaxis()
        ax.set(title=name, xlabel=f"time ({unit})", ylabel=ylabel)
    handles = [plt.Line2D([], [], color=c, label=e) for e, c in EVENT_COLOURS.items()]
    axes[1, 1].legend(handles=handles, fontsize=8, loc="best", title="events")
    ax = axes[1, 2]
    ax.axis("off")
    ax.text(0, 1, _summary(result), va="top", ha="left", family="monospace", fontsize=8.5, transform=ax.transAxes)
    fig.subplots_adjust(left=0.05, right=0.985, bottom=0.07, top=0.92, wspace=0.28, hspace=0.32)  # tight_layout: 0.3 s
    canvas = fig.canvas
    canvas.draw()
    image = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


def _summary(result: dict[str, Any]) -> str:
    lines = [f"L = {result['length_px']:.1f} px" if result.get("length_px") else "no C2-C4 length"]
    for k, swallow in enumerate(result.get("swallows", [])):
        lines.append(f"swallow {k + 1}: frames {swallow['frames'][0]}-{swallow['frames'][1]}")
        for key, value in swallow["measures"].items():
            text = value if isinstance(value, str) or value is None else f"{value:.3g}"
            lines.append(f"  {key[:30]:30s} {text}")
    flags = list(result.get("flags", [])) + [f for s in result.get("swallows", []) for f in s["flags"]]
    lines += [f"! {f[:60]}" for f in flags[:6]]
    return "\n".join(lines[:34])


def write_kinematics(result: dict[str, Any], out_dir: PathLike, study: str, sheet: bool = True) -> dict[str, Path]:
    """Write ``out_dir/<study>.csv``, ``.json`` and (``sheet``) ``.png`` from :func:`~.measures.analyse`'s result.

    Raises:
        FileExistsError: one of them exists already (nothing is overwritten: choose another ``out_dir``).
    """
    out_dir = Path(out_dir)
    paths = {"csv": out_dir / f"{study}.csv", "json": out_dir / f"{study}.json"}
    if sheet:
        paths["png"] = out_dir / f"{study}.png"
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing:
        raise FileExistsError(f"{', '.join(existing)} exist already; choose another output folder.")
    summary = {k: v for k, v in result.items() if k != "frames"}
    summary["study"] = study
    summary["csv"] = paths["csv"].name
    write_text(paths["csv"], _csv_text(result))
    write_json(paths["json"], json_ready(summary))
    if sheet:
        from PIL import Image

        with atomic_path(paths["png"], suffix=".png") as tmp:
            Image.fromarray(kinematics_sheet(result, title=f"{study}: swallow kinematics")).save(tmp)
    return paths
