"""How far the phantom is from real VFSS, in numbers a project can track, and what the model sees in real frames.

:func:`frame_statistics` describes one grey frame: the exposed field's share of the frame (rows and columns with
exposed pixels, :func:`~vfss_agglo_bundle.data.transforms.exposed_field`), the intensity distribution inside the
exposed pixels (mean, spread, percentiles, saturated-bright share, a 32-bin histogram), and the edge density
(share of exposed pixels whose Sobel gradient magnitude, on the frame resized to 256 px, exceeds 0.05).
:func:`compare` puts the phantom's and some real frames' statistics side by side (table and figure), and
:func:`prediction_sheet` shows a model's masks on real frames, as given (the whole field, aspect-true).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from skimage.filters import sobel
from vfss_agglo_bundle.data.formats import IMAGE_EXTENSIONS, to_grey_uint8
from vfss_agglo_bundle.data.tasks import DEFAULT_TASKS
from vfss_agglo_bundle.data.transforms import FIELD_THRESHOLD, exposed_field, frame_box, restore_masks, to_model_input
from vfss_agglo_bundle.networks.segmenter import VFSSSegmenter
from vfss_agglo_bundle.phantom.anatomy import PhantomConfig
from vfss_agglo_bundle.phantom.render import simulate_study
from vfss_agglo_bundle.utils.io import PathLike, natural_key
from vfss_agglo_bundle.visualize import contact_sheet, legend, overlay

__all__ = ["EDGE_THRESHOLD", "compare", "frame_statistics", "prediction_sheet", "read_frames"]

EDGE_THRESHOLD = 0.05
HIST_BINS = 32
TILE = 384
STATISTICS = ("field_coverage", "exposed_fraction", "mean", "std", "p5", "p50", "p95", "saturated", "edge_density")


def read_frames(source: PathLike) -> list[tuple[str, np.ndarray]]:
    """``(name, grey uint8 [H, W])`` of one image file or of every image in a folder (sorted by number)."""
    source = Path(source)
    if source.is_file():
        paths = [source]
    elif source.is_dir():
        paths = sorted((p for p in source.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS),
                       key=lambda p: natural_key(p.name))  # fmt: skip
    else:
        raise FileNotFoundError(f"{source} is neither an image file nor a folder of frames.")
    if not paths:
        raise FileNotFoundError(f"no frames ({', '.join(IMAGE_EXTENSIONS)}) in {source}.")
    frames = []
    for path in paths:
        with Image.open(path) as image:  # colour, RGBA and 16-bit exports are made grey, as videos are
            frames.append((path.name, to_grey_uint8(np.asarray(image))))
    return frames


def frame_statistics(frame: np.ndarray) -> dict[str, Any]:
    """Statistics of one grey uint8 ``[H, W]`` frame (see the module docstring); ``histogram`` is ``[32]``."""
    grey = frame.astype(np.float32) / 255.0
    top, left, height, width = exposed_field(grey)
    exposed = grey > FIELD_THRESHOLD
    values = grey[exposed] if exposed.any() else grey.ravel()
    small = np.asarray(Image.fromarray(frame).resize((256, 256), Image.BILINEAR), np.float32) / 255.0
    small_exposed = small > FIELD_THRESHOLD
    edges = sobel(small) > EDGE_THRESHOLD
    histogram, _ = np.histogram(values, bins=HIST_BINS, range=(0.0, 1.0))
    return {
        "shape": [int(frame.shape[0]), int(frame.shape[1])],
        "field_coverage": height * width / frame.size,
        "exposed_fraction": float(exposed.mean()),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "p5": float(np.percentile(values, 5)),
        "p50": float(np.percentile(values, 50)),
        "p95": float(np.percentile(values, 95)),
        "saturated": float((values >= 250 / 255).mean()),
        "edge_density": float(edges[small_exposed].mean()) if small_exposed.any() else 0.0,
        "histogram": (histogram / max(1, histogram.sum())).tolist(),
    }


def _summary(stats: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out = {key: float(np.mean([s[key] for s in stats])) for key in STATISTICS}
    out["histogram"] = np.mean([s["histogram"] for s in stats], axis=0).tolist()
    out["frames"] = len(stats)
    return out


def compare(real: Sequence[tuple[str, np.ndarray]], phantom_studies: int = 4, seed: int = 0) -> dict[str, Any]:
    """The phantom's (``phantom_studies`` default studies, every frame) and the real frames' statistics.

    Returns ``{"phantom": summary, "real": summary, "real_frames": {name: stats}, "markdown": table, "figure":
    RGB uint8}``; a summary is the mean of each statistic over the frames (and the mean histogram).
    """
    cfg = PhantomConfig()
    phantom = [image for study in range(phantom_studies) for image, _ in simulate_study(seed + study, cfg, ("bolus",))]
    phantom_stats = [frame_statistics(f) for f in phantom]
    real_stats = {name: frame_statistics(f) for name, f in real}
    result = {
        "phantom": _summary(phantom_stats),
        "real": _summary(list(real_stats.values())),
        "real_frames": real_stats,
    }
    lines = ["| statistic | phantom | real |", "|---|---|---|"]
    lines += [f"| {key} | {result['phantom'][key]:.3f} | {result['real'][key]:.3f} |" for key in STATISTICS]
    result["markdown"] = "\n".join(lines) + "\n"
    result["figure"] = _figure(result, phantom[len(phantom) // 2], real[0][1])
    return result


def _figure(result: dict[str, Any], phantom_frame: np.ndarray, real_frame: np.ndarray) -> np.ndarray:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 4), dpi=90)
    axes[0].imshow(phantom_frame, cmap="gray", vmin=0, vmax=255)
    axes[0].set_title("phantom (default)")
    axes[1].imshow(real_frame, cmap="gray", vmin=0, vmax=255)
    axes[1].set_title("real")
    centres = (np.arange(HIST_BINS) + 0.5) / HIST_BINS
    for name in ("phantom", "real"):
        axes[2].plot(centres, result[name]["histogram"], marker=".", label=name)
    axes[2].set(title="intensity of exposed pixels", xlabel="grey value", ylabel="share")
    axes[2].legend()
    keys = [k for k in STATISTICS if k not in ("mean", "std", "p5", "p50", "p95")]
    x = np.arange(len(keys))
    axes[3].bar(x - 0.2, [result["phantom"][k] for k in keys], 0.4, label="phantom")
    axes[3].bar(x + 0.2, [result["real"][k] for k in keys], 0.4, label="real")
    axes[3].set_xticks(x, [k.replace("_", "\n") for k in keys], fontsize=8)
    axes[3].set_title("field and edges")
    axes[3].legend()
    for ax in axes[:2]:
        ax.axis("off")
    fig.tight_layout()
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return rgb


def _fit(rgb: np.ndarray, side: int = TILE) -> np.ndarray:
    """``rgb`` scaled to fit a ``side`` x ``side`` black tile, proportions kept."""
    scale = side / max(rgb.shape[:2])
    size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
    tile = np.zeros((side, side, 3), np.uint8)
    small = np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))
    top, left = (side - small.shape[0]) // 2, (side - small.shape[1]) // 2
    tile[top : top + small.shape[0], left : left + small.shape[1]] = small
    return tile


@torch.inference_mode()
def prediction_sheet(
    frames: Sequence[tuple[str, np.ndarray]],
    checkpoint: PathLike,
    student: str = "efficientvit_b0",
    image_size: int = 256,
    tasks: Sequence[str] = DEFAULT_TASKS,
    decoder_width: int = 64,
    crop_field: bool = False,
) -> tuple[np.ndarray, dict[str, dict[str, int]]]:
    """A contact sheet of ``checkpoint``'s masks on each frame (aspect-true, at the frame's size) with a legend,
    and per frame the pixel area found of each structure."""
    network = VFSSSegmenter(student, num_classes=len(tasks), decoder_width=decoder_width)
    network.load_checkpoint(checkpoint)
    network.eval()
    tiles, titles, found = [], [], {}
    for name, frame in frames:
        grey = torch.from_numpy(frame).float().div(255.0)
        box = frame_box(frame.shape, exposed_field(grey.numpy()) if crop_field else None)
        logits = network(to_model_input(grey[None], box, image_size)[None])[0]
        masks = (restore_masks((logits.sigmoid() > 0.5).float(), box, frame.shape) > 0.5).numpy().astype(np.uint8)
        found[name] = {t: int(m.sum()) for t, m in zip(tasks, masks, strict=True)}
        tiles.append(_fit(overlay(frame, masks)))
        titles.append(f"{name}: {sum(area > 0 for area in found[name].values())}/{len(tasks)} structures found")
    sheet = contact_sheet(tiles, titles, cols=min(4, len(tiles)))
    return np.concatenate([sheet, legend(list(tasks), sheet.shape[1])]), found
