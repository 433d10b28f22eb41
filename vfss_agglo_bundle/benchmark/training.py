"""Training throughput: one stage-2 (and stage-1) step split into data, forward, backward and optimizer step.

The segmentation step is MONAI's ``SupervisedTrainer._iteration`` itself, as ``configs/train.yaml`` builds its
parts (network, inferer, loss), timed between the engine's own iteration events (forward and loss, backward,
optimizer step). 0.7.0's step (full precision, contiguous tensors, ``DiceCELoss``) runs interleaved with it, round by
round, so machine load hits both alike. The data path (loading and augmenting one batch) is timed separately, as is
validation (no-grad forward of a batch) and the student encoder alone, whose share of the step it gives.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.data import list_data_collate
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.inferers import SimpleInferer
from monai.losses import DiceCELoss
from monai.transforms import Compose, RandAffined
from vfss_agglo_bundle.benchmark.machine import describe_machine
from vfss_agglo_bundle.benchmark.targets import distill_trainer
from vfss_agglo_bundle.data.datalist import load_datalist
from vfss_agglo_bundle.networks.segmenter import VFSSSegmenter
from vfss_agglo_bundle.phantom.dataset import synthesize_dataset
from vfss_agglo_bundle.teachers.registry import build_teacher

__all__ = ["PHASES", "training_throughput"]

PHASES = ("forward", "backward", "step")


def _config(config_file: str, **overrides: Any) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(config_file)
    for key, value in overrides.items():
        parser[key] = value
    return parser


def _timed_trainer(trainer: SupervisedTrainer, batch: dict) -> Callable[[], dict[str, float]]:
    """A function running one ``trainer`` iteration on ``batch`` and returning its phases' seconds."""
    marks: list[float] = []
    for event in (
        IterationEvents.FORWARD_COMPLETED,
        IterationEvents.BACKWARD_COMPLETED,
        IterationEvents.MODEL_COMPLETED,
    ):
        trainer.add_event_handler(event, lambda _: marks.append(time.perf_counter()))

    def run() -> dict[str, float]:
        marks.clear()
        start = time.perf_counter()
        trainer._iteration(trainer, batch)
        forward, backward, step = marks
        return {"forward": forward - start, "backward": backward - forward, "step": step - backward}

    return run


def _segmentation_trainer(network: torch.nn.Module, inferer: Any, loss: Any, lr: float) -> SupervisedTrainer:
    optimizer = torch.optim.AdamW(network.param_groups(lr), lr=lr, weight_decay=0.01)
    return SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=[],
        network=network,
        optimizer=optimizer,
        loss_function=loss,
        inferer=inferer,
    )


def _data_batch(transforms: Callable, items: list[dict], batch_size: int, offset: int) -> dict:
    return list_data_collate([transforms(items[(offset + i) % len(items)]) for i in range(batch_size)])


def training_throughput(
    config_file: str = "configs/train.yaml",
    image_size: int = 256,
    batch_size: int = 8,
    rounds: int = 10,
    threads: int = 2,
) -> dict[str, Any]:
    """Time the training step of 0.7.0 and of ``config_file`` interleaved over ``rounds`` rounds (after one warm-up
    round), and the data path, validation, stage 1 and the encoder alone. Returns ``{"machine", "settings", "rows",
    "markdown"}``; each row has the median seconds of each phase, the total, frames a second and the speed-up over
    0.7.0's step. Run from the bundle root (the config's ``%configs/common.yaml`` macros)."""
    torch.set_num_threads(int(threads))
    parser = _config(config_file, image_size=image_size, device="$torch.device('cpu')")
    lr = float(parser.get_parsed_content("seg_lr"))
    g = torch.Generator().manual_seed(0)
    image = torch.rand(batch_size, 1, image_size, image_size, generator=g)
    label = (torch.rand(batch_size, 12, image_size, image_size, generator=g) > 0.9).float()
    batch = {"image": image, "label": label}

    old = _segmentation_trainer(
        VFSSSegmenter(init_seed=0), SimpleInferer(), DiceCELoss(sigmoid=True, lambda_dice=0.5, lambda_ce=0.5), lr
    )
    new_net = parser.get_parsed_content("network")
    new = _segmentation_trainer(
        new_net, parser.get_parsed_content("train_inferer"), parser.get_parsed_content("train#loss"), lr
    )
    encoder = new_net.encoder

    def encoder_alone() -> dict[str, float]:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=new.inferer.dtype == "bfloat16"):
            maps = encoder(image.contiguous(memory_format=torch.channels_last))
        forward = time.perf_counter()
        sum(m.float().mean() for m in maps).backward()
        return {"forward": forward - start, "backward": time.perf_counter() - forward, "step": 0.0}

    def validation() -> dict[str, float]:
        new_net.eval()
        start = time.perf_counter()
        with torch.no_grad():
            new.inferer(image, new_net)
        return {"forward": time.perf_counter() - start, "backward": 0.0, "step": 0.0}

    stage1 = distill_trainer("efficientvit_b0", build_teacher("hog"), "attention", torch.device("cpu"), [], False)
    targets = _stage1_targets(stage1, image)
    variants = {
        "stage 2, 0.7.0 (float32, contiguous, DiceCELoss)": _timed_trainer(old, batch),
        f"stage 2, this version ({new.inferer.dtype or 'float32'}, channels-last, DiceBCELoss)": _timed_trainer(
            new, batch
        ),
        "stage 2 student encoder alone (this version)": encoder_alone,
        "validation forward (this version, no grad)": validation,
        "stage 1 (DistillationTrainer, HOG targets from the store)": _timed_trainer(
            stage1, {"image": image, **targets}
        ),
    }
    times: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    for round_ in range(rounds + 1):  # round 0 warms up
        for name, run in variants.items():
            phases = run()
            if round_:
                times[name].append(phases)
    data_rows = _data_path(parser, image_size, batch_size, rounds)
    base = None
    rows = []
    for name, samples in times.items():
        row: dict[str, Any] = {"step": name, "batch": batch_size}
        for phase in PHASES:
            row[f"{phase}_ms"] = statistics.median(s[phase] for s in samples) * 1e3
        row["total_ms"] = statistics.median(sum(s.values()) for s in samples) * 1e3
        row["frames_per_s"] = batch_size / row["total_ms"] * 1e3
        base = base or row["frames_per_s"]
        row["speedup"] = row["frames_per_s"] / base if name.startswith("stage 2, ") else None  # same work only
        rows.append(row)
    new_row, encoder_row = rows[1], rows[2]
    encoder_share = encoder_row["total_ms"] / new_row["total_ms"]
    settings = {"image_size": image_size, "batch_size": batch_size, "rounds": rounds, "threads": threads,
                "config_file": config_file, "autocast": new.inferer.dtype}  # fmt: skip
    report = {"machine": describe_machine(), "settings": settings, "rows": rows, "data": data_rows,
              "encoder_share": encoder_share}  # fmt: skip
    report["markdown"] = _markdown(report)
    return report


def _stage1_targets(trainer: Any, image: torch.Tensor) -> dict[str, torch.Tensor]:
    """Random float targets shaped like the stored features of the trainer's one teacher."""
    g = torch.Generator().manual_seed(1)
    name = trainer.loss_function.teacher_names[0]
    with torch.no_grad():
        out = trainer.network(image)
    summary, dense = out.predictions[name]
    targets = {f"{name}_dense": torch.randn(dense.shape, generator=g)}
    if summary is not None:
        targets[f"{name}_summary"] = torch.randn(summary.shape, generator=g)
    return targets


def _data_path(parser: ConfigParser, image_size: int, batch_size: int, rounds: int) -> list[dict[str, Any]]:
    """Median seconds to load and augment one batch from a small phantom dataset: 0.7.0's spatial augmentation
    (one ``RandAffined``) and this version's (``train#preprocessing``)."""
    with tempfile.TemporaryDirectory() as tmp:
        datalist = synthesize_dataset(tmp, studies=3, frames=batch_size, image_size=image_size, ratios=(1, 1, 1))
        parser["datalist_file"] = str(datalist)
        items = load_datalist(datalist, "training")
        load = parser.get_parsed_content("load_transforms")
        intensity = parser.get_parsed_content("intensity_augment")
        old_spatial = RandAffined(keys=["image", "label"], prob=0.7, rotate_range=0.17, scale_range=0.1,
                                  translate_range=[16, 16], mode=["bilinear", "nearest"])  # fmt: skip
        pipelines = {
            "0.7.0 (load, affine, intensity)": Compose([*load, old_spatial, *intensity]),
            "this version (load, mirror, zoom, tilt and shift, intensity)": parser.get_parsed_content(
                "train#preprocessing"
            ),
        }
        times: dict[str, list[float]] = {name: [] for name in pipelines}
        for round_ in range(rounds + 1):
            for name, transforms in pipelines.items():
                start = time.perf_counter()
                _data_batch(transforms, items, batch_size, round_ * batch_size)
                if round_:
                    times[name].append(time.perf_counter() - start)
    return [{"data": name, "batch": batch_size, "ms": statistics.median(t) * 1e3,
             "frames_per_s": batch_size / statistics.median(t)} for name, t in times.items()]  # fmt: skip


def _markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        f"Training throughput, {s['image_size']} x {s['image_size']}, batch {s['batch_size']}, {s['threads']} threads, "
        f"median of {s['rounds']} interleaved rounds ({report['machine']['cpu']})",
        "",
        "| step | forward + loss ms | backward ms | optimizer step ms | total ms | frames/s | vs 0.7.0 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(f"| {r['step']} | {r['forward_ms']:.0f} | {r['backward_ms']:.0f} | {r['step_ms']:.0f} | "
                     f"{r['total_ms']:.0f} | {r['frames_per_s']:.1f} | "
                     f"{'-' if r['speedup'] is None else format(r['speedup'], '.2f') + 'x'} |")  # fmt: skip
    lines += ["", f"Student encoder's share of this version's stage-2 step: {report['encoder_share']:.0%}", "",
              "| data path (one batch) | ms | frames/s |", "|---|---|---|"]  # fmt: skip
    lines += [f"| {r['data']} | {r['ms']:.0f} | {r['frames_per_s']:.1f} |" for r in report["data"]]
    return "\n".join(lines) + "\n"
