"""The rows of the benchmark: how to build each model to time (students, teachers, a distillation step).

- ``student``: ``VFSSSegmenter`` per backbone with random weights (speed does not depend on the values);
  ``student (optimized)``: the same after :func:`~vfss_agglo_bundle.networks.fusion.optimize_for_inference`;
  ``onnxruntime``: the exported ONNX segmenter on ONNX Runtime (CPU only).
- ``teacher``: a teacher's whole forward (its own resize, normalisation and encoder) on the canonical frame, with
  real weights when they are present, else the full-size architecture with random weights (same speed) or, by
  default, the tiny test preset, labelled ``tiny (random) - not representative``.
- ``distillation step``: one iteration of the stage-1 ``DistillationTrainer`` (forward, backward, clipping and AdamW
  step of ``DistillationModel`` + ``DistillationLoss`` + a balancer), with targets from the feature store
  (precomputed fp16 tensors) or computed by the trainer from the online LiteMedSAM teacher.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from vfss_agglo_bundle.benchmark.measure import random_images
from vfss_agglo_bundle.engines.distill_trainer import DistillationTrainer
from vfss_agglo_bundle.export.formats import export_onnx, onnx_runner
from vfss_agglo_bundle.losses.balancing import build_balancer
from vfss_agglo_bundle.losses.distill import DistillationLoss
from vfss_agglo_bundle.networks.adaptors import DistillationModel
from vfss_agglo_bundle.networks.fusion import optimize_for_inference
from vfss_agglo_bundle.networks.segmenter import VFSSSegmenter
from vfss_agglo_bundle.networks.student import StudentEncoder
from vfss_agglo_bundle.teachers.registry import TEACHERS, build_teacher, expected_weight_path
from vfss_agglo_bundle.utils.registry import check_name

__all__ = [
    "DISTILL_LR",
    "FULL_RANDOM",
    "REAL",
    "STUDENT_RANDOM",
    "TEACHER_NAMES",
    "TINY",
    "Built",
    "Target",
    "distill_step_targets",
    "distill_trainer",
    "student_targets",
    "teacher_targets",
]

REAL = "real weights"
FULL_RANDOM = "full-size, random weights (speed only)"
TINY = "tiny (random) - not representative"
STUDENT_RANDOM = "random init (speed only)"
TEACHER_NAMES: tuple[str, ...] = tuple(TEACHERS)
DISTILL_LR = 2.0e-3  # configs/train.yaml distill_lr (the speed does not depend on it)


@dataclass
class Built:
    """A model ready to time on one device: ``module`` (its parameters are counted), ``forward(image)`` and a
    description of the network input (``C x H x W`` after the model's own preprocessing)."""

    module: nn.Module
    forward: Callable[[torch.Tensor], Any]
    input: str


@dataclass
class Target:
    """One benchmark row per device: ``build(device)`` makes the model; ``batches`` overrides the run's batch sizes;
    ``inference`` runs it under ``torch.inference_mode`` (a training step does not)."""

    name: str
    group: str
    weights: str
    build: Callable[[torch.device], Built]
    batches: tuple[int, ...] | None = None
    inference: bool = True
    cpu_only: bool = False
    note: str = ""


def _describe_input(tensor: torch.Tensor) -> str:
    return "x".join(str(s) for s in tensor.shape[1:])


def student_targets(
    backbones: Sequence[str],
    num_classes: int,
    image_size: int,
    optimized: bool = True,
    onnx: bool = True,
    onnx_dynamo: bool = True,
    threads: int | None = None,
) -> list[Target]:
    """Rows for the segmenter of each backbone: eager, after ``optimize_for_inference`` and on ONNX Runtime."""
    targets = []
    for backbone in backbones:

        def eager(device: torch.device, backbone: str = backbone) -> Built:
            model = VFSSSegmenter(backbone, num_classes=num_classes).eval().to(device)
            return Built(model, model, f"1x{image_size}x{image_size}")

        def fast(device: torch.device, backbone: str = backbone) -> Built:
            model = VFSSSegmenter(backbone, num_classes=num_classes).eval().to(device)
            model = optimize_for_inference(model, random_images(1, image_size, device))
            return Built(model, model, f"1x{image_size}x{image_size}")

        def ort(device: torch.device, backbone: str = backbone) -> Built:
            model = VFSSSegmenter(backbone, num_classes=num_classes).eval()
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "model.onnx"
                export_onnx(model, path, random_images(1, image_size, device), dynamo=onnx_dynamo)
                run = onnx_runner(path, threads)
            return Built(model, run, f"1x{image_size}x{image_size}")

        targets.append(Target(backbone, "student", STUDENT_RANDOM, eager))
        if optimized:
            targets.append(Target(backbone, "student (optimized)", STUDENT_RANDOM, fast))
        if onnx:
            targets.append(Target(backbone, "onnxruntime", STUDENT_RANDOM, ort, cpu_only=True))
    return targets


def teacher_targets(
    names: Sequence[str],
    teacher_dir: str | os.PathLike | None = None,
    full_size_random: bool = False,
    include_medsam: bool = False,
    image_size: int = 256,
) -> list[Target]:
    """One row per teacher, choosing its weights in this order.

    Teachers whose weights ship in packages (``litemedsam``, ``hed``, ``ct_clip_r152``) or that have none (``hog``)
    always run real. Another teacher whose weights exist under
    ``teacher_dir`` is built from them. Otherwise: MedSAM runs full-size with random weights only with
    ``include_medsam`` (about 22 s a frame on 2 CPU cores), the others only with ``full_size_random``; in every other
    case the tiny preset stands in, labelled ``tiny (random) - not representative``.
    """
    for name in names:
        check_name(name, TEACHERS, "teacher")
    targets = []
    for name in names:
        path = expected_weight_path(name, teacher_dir)
        builder = TEACHERS[name]
        if builder.weights is None or builder.packaged or (path is not None and path.exists()):
            weights, make = REAL, lambda name=name: build_teacher(name, teacher_dir, "full")
        elif include_medsam if name == "medsam" else full_size_random:
            weights, make = FULL_RANDOM, lambda name=name: build_teacher(name, preset="full", random_weights=True)
        else:
            weights, make = TINY, lambda name=name: build_teacher(name, None, "tiny")

        def build(device: torch.device, make: Callable[[], nn.Module] = make) -> Built:
            teacher = make().to(device)
            native = teacher.preprocess(random_images(1, image_size, device))
            return Built(teacher, teacher, f"{_describe_input(native)} (from 1x{image_size}x{image_size})")

        targets.append(Target(name, "teacher", weights, build))
    return targets


def _stored_targets(teacher: nn.Module, size: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Random ``teacher`` targets of ``size`` frames from the fp16 feature store, as the data loader delivers them
    (float32)."""
    spec = teacher.spec
    shapes = {f"{teacher.name}_dense": (size, spec.dense_dim, *spec.grid)}
    if spec.summary_dim is not None:
        shapes[f"{teacher.name}_summary"] = (size, spec.summary_dim)
    return {key: torch.randn(shape, device=device).half().float() for key, shape in shapes.items()}


def distill_trainer(
    backbone: str,
    teacher: nn.Module,
    balancer: str,
    device: torch.device,
    data: Sequence[Mapping[str, Any]],
    online: bool,
) -> DistillationTrainer:
    """The stage-1 ``DistillationTrainer`` of ``configs/train.yaml`` for one ``teacher`` (a built ``Teacher``), over
    ``data`` (batches shaped as the distillation data loader gives them): ``DistillationModel`` of the student and
    the teacher's head, ``DistillationLoss``, the ``balancer``, AdamW over both (the balancer's group at 10x the
    learning rate, no weight decay) and gradients clipped at 1.0. ``online``: the trainer runs the teacher on each
    batch's image; otherwise it reads the targets from the batch. Seeded, so two calls start from the same weights."""
    name = teacher.name
    model = DistillationModel(StudentEncoder(backbone, init_seed=0), {name: teacher.spec}, init_seed=0).to(device)
    weigher = build_balancer(balancer, [name], feature_dim=model.student.summary_dim, init_seed=0).to(device)
    optimizer = torch.optim.AdamW(
        [
            {"params": model.parameters(), "weight_decay": 0.01},
            {"params": weigher.parameters(), "lr": 10 * DISTILL_LR, "weight_decay": 0.0},
        ],
        lr=DISTILL_LR,
    )
    return DistillationTrainer(
        device=device,
        max_epochs=1,
        train_data_loader=data,
        network=model,
        optimizer=optimizer,
        loss_function=DistillationLoss([name]),
        balancer=weigher,
        teacher_models={name: teacher} if online else None,
        grad_clip=1.0,
    )


def distill_step_targets(
    backbone: str,
    image_size: int,
    batch_size: int = 8,
    balancer: str = "attention",
    online: bool = True,
    teacher: str = "litemedsam",
) -> list[Target]:
    """Rows for one stage-1 training step, ``DistillationTrainer``'s own iteration (:func:`distill_trainer`), on the
    targets of ``teacher`` (one that needs no weight files: ``litemedsam``, real weights, or ``hog``): read from the
    feature store and, with ``online``, computed by the teacher inside the step."""

    def make_step(device: torch.device, online: bool) -> Built:
        built = build_teacher(teacher).to(device)
        trainer = distill_trainer(backbone, built, balancer, device, [], online)  # step() hands it each batch
        stored: dict[int, dict[str, torch.Tensor]] = {}

        def step(image: torch.Tensor) -> None:
            batch = {"image": image}
            if not online:
                if image.shape[0] not in stored:
                    stored[image.shape[0]] = _stored_targets(built, image.shape[0], device)
                batch.update(stored[image.shape[0]])
            trainer._iteration(trainer, batch)

        return Built(trainer.network, step, f"1x{image_size}x{image_size}")

    teacher_weights = "no weights" if teacher == "hog" else REAL  # the teachers that need no weight files
    weights = f"student {STUDENT_RANDOM}; {teacher} {teacher_weights}"
    variants = [("feature store targets", False)] + ([(f"online {teacher}", True)] if online else [])
    return [
        Target(
            f"{backbone}: {label}",
            "distillation step",
            weights,
            lambda device, flag=flag: make_step(device, flag),
            batches=(batch_size,),
            inference=False,
            note=f"DistillationTrainer iteration (forward + backward + AdamW step), {balancer} balancer",
        )
        for label, flag in variants
    ]
