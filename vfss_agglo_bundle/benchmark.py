"""Speed benchmark of the student segmenter against its teachers: latency, throughput, peak memory, FLOPs.

Everything is measured in one process and one run: on a shared machine timings swing 2-3x between runs, so only
ratios measured together are quoted. The rows (``group``):

- ``student``: ``VFSSSegmenter`` per backbone with random weights (speed does not depend on the values);
  ``student (optimized)``: the same after :func:`~vfss_agglo_bundle.export.optimize_for_inference`;
  ``onnxruntime``: the exported ONNX segmenter on ONNX Runtime (CPU only).
- ``teacher``: a teacher's whole forward (its own resize, normalisation and encoder) on the canonical frame, with
  real weights when they are present, else the full-size architecture with random weights (same speed) or, by
  default, the tiny test preset, labelled ``tiny (random) - not representative``.
- ``distillation step``: forward + backward + optimizer step of ``DistillationModel`` + ``DistillationLoss`` + a
  balancer, with targets from the feature store (precomputed fp16 tensors) or from the online LiteMedSAM teacher.

Latency: median and 90th percentile of the wall time of one call after warm-up (CUDA synchronised); throughput:
frames per second at the median. Peak memory, from the first call of a batch size on: on the CPU the rise of the
process's resident-set high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``), on the GPU
``torch.cuda.max_memory_allocated`` above what was allocated before. FLOPs: ``torch.utils.flop_counter`` on the
first warm-up call (matmul, conv and attention only; one multiply-add counts 2).
"""

from __future__ import annotations

import copy
import gc
import logging
import os
import platform
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from vfss_agglo_bundle.data.io import atomic_path, write_json
from vfss_agglo_bundle.export import export_onnx, onnx_runner, optimize_for_inference
from vfss_agglo_bundle.losses.balancing import build_balancer
from vfss_agglo_bundle.losses.distill import DistillationLoss
from vfss_agglo_bundle.networks import DistillationModel, StudentEncoder, TeacherSpec, VFSSSegmenter
from vfss_agglo_bundle.tasks import DEFAULT_TASKS

__all__ = [
    "Entry",
    "Measurement",
    "Target",
    "count_flops",
    "count_params",
    "describe_machine",
    "distill_step_targets",
    "inference_ablation",
    "measure",
    "run_benchmark",
    "start_memory_window",
    "run_targets",
    "speed_ratios",
    "student_targets",
    "teacher_targets",
    "to_markdown",
    "write_report",
]

logger = logging.getLogger(__name__)

REAL = "real weights"
FULL_RANDOM = "full-size, random weights (speed only)"
TINY = "tiny (random) - not representative"
STUDENT_RANDOM = "random init (speed only)"
TEACHER_NAMES: tuple[str, ...] = ("medsam", "litemedsam", "rad_dino", "medclip", "biomedclip")
STUDENT_GROUPS: tuple[str, ...] = ("student", "student (optimized)", "onnxruntime")
MIN_RUNS = 3
OPENMP_ENV: tuple[str, ...] = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


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


@dataclass
class Measurement:
    """Timing of one batch size: per-call latency in ms, frames per second at the median, peak memory in MiB."""

    batch: int
    median_ms: float
    p90_ms: float
    frames_per_s: float
    peak_memory_mib: float | None
    runs: int


@dataclass
class Entry:
    """One row of the benchmark table."""

    name: str
    group: str
    weights: str
    device: str
    input: str
    params: int
    gflops_per_frame: float | None
    measurements: list[Measurement] = field(default_factory=list)
    note: str = ""

    def at_batch(self, batch: int) -> Measurement | None:
        return next((m for m in self.measurements if m.batch == batch), None)


def _cpu_model() -> str:
    try:
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
    except OSError:
        match = None
    return match.group(1).strip() if match else platform.processor() or "unknown"


def describe_machine() -> dict[str, Any]:
    """CPU model, cores, threads, load, library versions and GPUs of this process's machine."""
    try:
        import onnxruntime

        ort_version: str | None = onnxruntime.__version__
    except ImportError:
        ort_version = None
    gpus = []
    if torch.cuda.is_available():
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "openmp_env": {k: os.environ[k] for k in OPENMP_ENV if k in os.environ},
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "gpus": gpus,
        "cuda": torch.version.cuda if gpus else None,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "onnxruntime": ort_version,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def count_params(module: nn.Module) -> int:
    """Number of parameters (trainable or not) of ``module``."""
    return sum(p.numel() for p in module.parameters())


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` as counted by ``torch.utils.flop_counter.FlopCounterMode``."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_kib(field_name: str) -> int | None:
    try:
        match = re.search(rf"^{field_name}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def start_memory_window(device: torch.device) -> int | None:
    """Start a peak-memory window; returns the baseline in bytes (None where it cannot be measured)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set (Linux)
    except OSError:
        return None
    rss = _status_kib("VmRSS")
    return None if rss is None else rss * 1024


def _peak_mib(device: torch.device, baseline: int | None) -> float | None:
    if baseline is None:
        return None
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        hwm = _status_kib("VmHWM")
        if hwm is None:
            return None
        peak = hwm * 1024
    return max(peak - baseline, 0) / 2**20


def measure(
    fn: Callable[[], Any],
    batch: int,
    device: torch.device,
    warmup: int = 3,
    repeats: int = 30,
    max_seconds: float = 20.0,
    memory_baseline: int | None = None,
) -> Measurement:
    """Time ``fn`` (one call processes ``batch`` frames) after ``warmup`` calls.

    A warm-up call that takes over a second ends the warm-up (the next ones would not change anything). Timed calls
    stop after ``repeats`` calls, or once ``max_seconds`` have passed and at least ``MIN_RUNS`` calls were made.
    The peak memory covers the warm-up and timed calls (so the first call's allocations count), measured from
    ``memory_baseline`` (from :func:`start_memory_window`) when given, else from just before the warm-up.
    """
    baseline = start_memory_window(device) if memory_baseline is None else memory_baseline
    for _ in range(warmup):
        start = time.perf_counter()
        fn()
        _synchronize(device)
        if time.perf_counter() - start > 1.0:
            break
    times: list[float] = []
    begin = time.perf_counter()
    while len(times) < max(repeats, 1) and (len(times) < MIN_RUNS or time.perf_counter() - begin < max_seconds):
        start = time.perf_counter()
        fn()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    p90 = sorted(times)[min(len(times) - 1, round(0.9 * (len(times) - 1)))]
    return Measurement(
        batch=batch,
        median_ms=median * 1e3,
        p90_ms=p90 * 1e3,
        frames_per_s=batch / median,
        peak_memory_mib=_peak_mib(device, baseline),
        runs=len(times),
    )


def _images(batch: int, image_size: int, device: torch.device) -> torch.Tensor:
    """Seeded canonical images ``[batch, 1, S, S]`` in [0, 1]."""
    generator = torch.Generator().manual_seed(batch)
    return torch.rand(batch, 1, image_size, image_size, generator=generator).to(device)


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
            model = optimize_for_inference(model, _images(1, image_size, device))
            return Built(model, model, f"1x{image_size}x{image_size}")

        def ort(device: torch.device, backbone: str = backbone) -> Built:
            model = VFSSSegmenter(backbone, num_classes=num_classes).eval()
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "model.onnx"
                export_onnx(model, path, _images(1, image_size, device), dynamo=onnx_dynamo)
                run = onnx_runner(path, threads)
            return Built(model, run, f"1x{image_size}x{image_size}")

        targets.append(Target(backbone, "student", STUDENT_RANDOM, eager))
        if optimized:
            targets.append(Target(backbone, "student (optimized)", STUDENT_RANDOM, fast))
        if onnx:
            targets.append(Target(backbone, "onnxruntime", STUDENT_RANDOM, ort, cpu_only=True))
    return targets


def full_size_random_teacher(name: str) -> nn.Module:
    """The full-size architecture of teacher ``name`` with random weights (for timing only: the outputs are noise)."""
    if name == "medsam":
        from vfss_agglo_bundle.teachers.medsam import PRESETS, MedSAMTeacher, sam_image_encoder

        return MedSAMTeacher(sam_image_encoder(PRESETS["full"]), PRESETS["full"])
    if name == "rad_dino":
        from transformers import Dinov2Config, Dinov2Model

        from vfss_agglo_bundle.teachers.rad_dino import RAD_DINO_MEAN, RAD_DINO_STD, RadDinoTeacher

        # microsoft/rad-dino config.json: DINOv2 ViT-B/14 at 518 (the transformers defaults are ViT-B/14)
        model = Dinov2Model(Dinov2Config(image_size=518, patch_size=14))
        processing = {"size": 518, "mode": "bicubic", "mean": [RAD_DINO_MEAN] * 3, "std": [RAD_DINO_STD] * 3}
        return RadDinoTeacher(model, processing)
    if name == "medclip":
        from transformers import SwinConfig, SwinModel

        from vfss_agglo_bundle.teachers.medclip import PRESETS, MedCLIPTeacher

        config = PRESETS["full"]
        swin = SwinModel(SwinConfig(**config["swin"]), add_pooling_layer=True)
        return MedCLIPTeacher(swin, nn.Linear(swin.num_features, config["projection_dim"], bias=False), config)
    if name == "biomedclip":
        from vfss_agglo_bundle.teachers.biomedclip import BiomedCLIPTeacher, vision_tower

        # model_cfg of microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224 (open_clip_config.json)
        vision_cfg = dict(timm_model_name="vit_base_patch16_224", timm_pool="", timm_proj="linear", image_size=224)
        model_cfg = {"embed_dim": 512, "vision_cfg": vision_cfg}
        return BiomedCLIPTeacher(vision_tower(model_cfg), model_cfg, {})
    raise ValueError(f"no full-size random build for teacher {name!r}; known: medsam, rad_dino, medclip, biomedclip")


def teacher_targets(
    names: Sequence[str],
    teacher_dir: str | os.PathLike | None = None,
    full_size_random: bool = False,
    include_medsam: bool = False,
    image_size: int = 256,
) -> list[Target]:
    """One row per teacher, choosing its weights in this order.

    ``litemedsam`` always has its real (shipped) weights. Another teacher whose weights exist under
    ``teacher_dir`` is built from them. Otherwise: MedSAM runs full-size with random weights only with
    ``include_medsam`` (about 22 s a frame on 2 CPU cores), the others only with ``full_size_random``; in every other
    case the tiny preset stands in, labelled ``tiny (random) - not representative``.
    """
    from vfss_agglo_bundle.teachers.registry import TEACHERS, build_teacher, expected_weight_path

    unknown = sorted(set(names) - set(TEACHERS))
    if unknown:
        raise ValueError(f"unknown teachers {unknown}; known teachers: {sorted(TEACHERS)}")
    targets = []
    for name in names:
        path = expected_weight_path(name, teacher_dir)
        if name == "litemedsam" or (path is not None and path.exists()):
            weights, make = REAL, lambda name=name: build_teacher(name, teacher_dir, "full")
        elif include_medsam if name == "medsam" else full_size_random:
            weights, make = FULL_RANDOM, lambda name=name: full_size_random_teacher(name)
        else:
            weights, make = TINY, lambda name=name: build_teacher(name, None, "tiny")

        def build(device: torch.device, make: Callable[[], nn.Module] = make) -> Built:
            teacher = make().to(device)
            native = teacher.preprocess(_images(1, image_size, device))
            return Built(teacher, teacher, f"{_describe_input(native)} (from 1x{image_size}x{image_size})")

        targets.append(Target(name, "teacher", weights, build))
    return targets


def distill_step_targets(
    backbone: str, image_size: int, batch_size: int = 8, balancer: str = "attention", online: bool = True
) -> list[Target]:
    """Rows for one stage-1 training step on LiteMedSAM targets (real weights): read from the feature store and,
    with ``online``, computed by the teacher inside the step."""

    def make_step(device: torch.device, online: bool) -> Built:
        from vfss_agglo_bundle.teachers.registry import build_teacher

        teacher = build_teacher("litemedsam").to(device)
        spec = TeacherSpec(teacher.dense_dim, teacher.grid, teacher.summary_dim)
        model = DistillationModel(StudentEncoder(backbone), {teacher.name: spec}).to(device).train()
        loss_fn = DistillationLoss([teacher.name])
        weigher = build_balancer(balancer, [teacher.name]).to(device).train()
        params = [*model.parameters(), *weigher.parameters()]
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        stored: dict[int, torch.Tensor] = {}

        def step(image: torch.Tensor) -> None:
            if online:
                out = teacher(image)
                targets = {teacher.name: (out.summary, out.dense)}
            else:  # a batch of the fp16 feature store, as the data loader delivers it
                if image.shape[0] not in stored:
                    shape = (image.shape[0], spec.dense_dim, *spec.grid)
                    stored[image.shape[0]] = torch.randn(shape, device=device).half()
                targets = {teacher.name: (None, stored[image.shape[0]].float())}
            optimizer.zero_grad(set_to_none=True)
            total, _ = weigher(loss_fn(model(image), targets))
            total.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()

        return Built(model, step, f"1x{image_size}x{image_size}")

    weights = f"student {STUDENT_RANDOM}; litemedsam {REAL}"
    variants = [("feature store targets", False)] + ([("online litemedsam", True)] if online else [])
    return [
        Target(
            f"{backbone}: {label}",
            "distillation step",
            weights,
            lambda device, flag=flag: make_step(device, flag),
            batches=(batch_size,),
            inference=False,
            note=f"forward + backward + AdamW step, {balancer} balancer",
        )
        for label, flag in variants
    ]


def run_targets(
    targets: Sequence[Target],
    devices: Sequence[str | torch.device],
    batches: Sequence[int] = (1, 8),
    image_size: int = 256,
    warmup: int = 3,
    repeats: int = 30,
    max_seconds: float = 20.0,
    slow_seconds: float = 30.0,
) -> list[Entry]:
    """Time every target on every device (one model in memory at a time) and return one ``Entry`` per pair.

    A larger batch is skipped (and the row says so) when the smallest batch predicts a call over ``slow_seconds``.
    """
    entries = []
    pairs = [(t, torch.device(d)) for t in targets for d in devices]
    runs = [(t, d) for t, d in pairs if not (t.cpu_only and d.type != "cpu")]
    for i, (target, device) in enumerate(runs, 1):
        logger.info("[%d/%d] %s / %s (%s) on %s", i, len(runs), target.group, target.name, target.weights, device)
        start = time.perf_counter()
        built = target.build(device)
        params = count_params(built.module)
        entry = Entry(target.name, target.group, target.weights, str(device), built.input, params, None)
        notes = [target.note] if target.note else []
        context = torch.inference_mode if target.inference else nullcontext
        for batch in target.batches or tuple(batches):
            first = entry.measurements[0] if entry.measurements else None
            counted = first is not None
            if first is not None and first.median_ms / 1e3 / first.batch * batch > slow_seconds:
                notes.append(f"batch {batch} skipped (over {slow_seconds:g} s a call)")
                continue
            images = _images(batch, image_size, device)
            baseline = start_memory_window(device)
            with context():
                if not counted:  # the FLOP count doubles as the first warm-up call
                    flops = count_flops(lambda b=built, x=images: b.forward(x))
                    entry.gflops_per_frame = flops / batch / 1e9 if flops else None
                entry.measurements.append(
                    measure(
                        lambda b=built, x=images: b.forward(x), batch, device, warmup, repeats, max_seconds, baseline
                    )
                )
            m = entry.measurements[-1]
            logger.info(
                "    batch %d: median %.1f ms, p90 %.1f ms, %.1f frames/s", batch, m.median_ms, m.p90_ms, m.frames_per_s
            )
        entry.note = "; ".join(notes)
        entries.append(entry)
        logger.info("    done in %.0f s", time.perf_counter() - start)
        del built
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return entries


def speed_ratios(entries: Sequence[Entry], batch: int = 1) -> dict[str, dict[str, dict[str, float]]]:
    """``{device: {student row: {teacher: teacher median / student median}}}`` at ``batch``.

    Student rows are named ``"<backbone> [<group>]"``; only pairs measured at that batch on that device appear.
    """
    ratios: dict[str, dict[str, dict[str, float]]] = {}
    for device in dict.fromkeys(e.device for e in entries):
        teachers = [(e.name, e.at_batch(batch)) for e in entries if e.device == device and e.group == "teacher"]
        for student in (e for e in entries if e.device == device and e.group in STUDENT_GROUPS):
            mine = student.at_batch(batch)
            if mine is None:
                continue
            row = {name: m.median_ms / mine.median_ms for name, m in teachers if m is not None}
            ratios.setdefault(device, {})[f"{student.name} [{student.group}]"] = row
    return ratios


def run_benchmark(
    backbones: Sequence[str],
    teachers: Sequence[str] = TEACHER_NAMES,
    teacher_dir: str | os.PathLike | None = None,
    full_size_random: bool = False,
    include_medsam: bool = False,
    image_size: int = 256,
    batch_size: int = 8,
    num_classes: int = len(DEFAULT_TASKS),
    threads: int = 2,
    devices: Sequence[str] | None = None,
    optimized: bool = True,
    onnx: bool = True,
    onnx_dynamo: bool = True,
    distill: bool = True,
    warmup: int = 3,
    repeats: int = 30,
    max_seconds: float = 20.0,
    slow_seconds: float = 30.0,
) -> dict[str, Any]:
    """The whole benchmark in this process: students, teachers, distillation steps, on the CPU and (when present, or
    as ``devices`` says) the GPU, at batch 1 and ``batch_size``. Returns the report (see :func:`write_report`)."""
    torch.set_num_threads(int(threads))
    if devices is None:
        devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    machine = describe_machine()
    targets = student_targets(backbones, num_classes, image_size, optimized, onnx, onnx_dynamo, threads)
    targets += teacher_targets(teachers, teacher_dir, full_size_random, include_medsam, image_size)
    if distill and backbones:
        targets += distill_step_targets(backbones[0], image_size, batch_size, online="litemedsam" in teachers)
    batches = tuple(sorted({1, int(batch_size)}))
    entries = run_targets(targets, devices, batches, image_size, warmup, repeats, max_seconds, slow_seconds)
    return {
        "started": started,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine,
        "settings": {
            "image_size": image_size,
            "batches": list(batches),
            "threads": threads,
            "devices": [str(d) for d in devices],
            "warmup": warmup,
            "repeats": repeats,
            "max_seconds": max_seconds,
            "slow_seconds": slow_seconds,
            "num_classes": num_classes,
            "teacher_dir": None if teacher_dir is None else str(teacher_dir),
            "full_size_random": full_size_random,
            "include_medsam": include_medsam,
        },
        "entries": [asdict(e) for e in entries],
        "ratios_batch1": speed_ratios(entries, 1),
    }


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
    with atomic_path(md_path, suffix=".md", keep_old=True) as tmp:
        tmp.write_text(markdown)
    return json_path, md_path


def inference_ablation(
    backbone: str = "efficientvit_b0",
    image_size: int = 256,
    threads: int = 2,
    video_batch: int = 8,
    rounds: int = 30,
    num_classes: int = len(DEFAULT_TASKS),
) -> dict[str, Any]:
    """Per-frame CPU latency of the segmenter under each inference setting, measured interleaved (every round runs
    every variant twice and times the second call, so machine load hits them alike), with the speed-up and max abs
    diff against eager.

    Variants: eager under ``no_grad`` (baseline); ``inference_mode``; channels-last; conv+BN folding and timm
    re-parameterisation; all of :func:`optimize_for_inference`; the same with 1 thread; the same on a batch of
    ``video_batch`` frames (how a video is processed). Returns ``{"machine", "settings", "rows", "markdown"}``.
    """
    torch.set_num_threads(int(threads))
    model = VFSSSegmenter(backbone, num_classes=num_classes).eval()
    video = _images(video_batch, image_size, torch.device("cpu"))
    frame = video[:1].clone()
    channels_last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    folded = optimize_for_inference(model, frame, channels_last=False)
    fast = optimize_for_inference(model, frame)
    variants = [
        ("eager, torch.no_grad (baseline)", model, frame, torch.no_grad, threads),
        ("eager, torch.inference_mode", model, frame, torch.inference_mode, threads),
        ("channels_last, inference_mode", channels_last, frame, torch.inference_mode, threads),
        ("conv-BN folding + timm re-parameterisation, inference_mode", folded, frame, torch.inference_mode, threads),
        ("optimize_for_inference (folding + channels_last)", fast, frame, torch.inference_mode, threads),
        ("optimize_for_inference, 1 thread", fast, frame, torch.inference_mode, 1),
        (f"optimize_for_inference, batch of {video_batch} video frames", fast, video, torch.inference_mode, threads),
    ]
    with torch.inference_mode():
        reference = torch.cat([model(video[i : i + 1]) for i in range(video_batch)])
        diffs = []
        for _, net, images, _, _ in variants:
            out = net(images)
            diffs.append(float((out - reference[: out.shape[0]]).abs().max()))
    times: list[list[float]] = [[] for _ in variants]
    for round_ in range(rounds + 1):  # the first round is warm-up
        for i, (_, net, images, context, n_threads) in enumerate(variants):
            torch.set_num_threads(n_threads)
            with context():
                net(images)  # untimed: the previous variant's data is evicted from the caches here, not in the timing
                start = time.perf_counter()
                net(images)
                elapsed = time.perf_counter() - start
            if round_ > 0:
                times[i].append(elapsed / images.shape[0])
    torch.set_num_threads(int(threads))
    base = statistics.median(times[0])
    rows = [
        {
            "variant": name,
            "batch": images.shape[0],
            "threads": n_threads,
            "ms_per_frame": statistics.median(t) * 1e3,
            "frames_per_s": 1.0 / statistics.median(t),
            "speedup": base / statistics.median(t),
            "max_abs_diff": diff,
        }
        for (name, _, images, _, n_threads), t, diff in zip(variants, times, diffs)
    ]
    lines = [
        f"## Faster CPU inference: {backbone} segmenter, {image_size}x{image_size}, {threads} threads",
        "",
        f"Median of {rounds} interleaved rounds (per frame), on {_cpu_model()}, torch {torch.__version__}.",
        "",
        "| variant | batch | threads | ms/frame | frames/s | speed-up | max abs diff |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['variant']} | {r['batch']} | {r['threads']} | {r['ms_per_frame']:.2f} | {r['frames_per_s']:.1f} | "
        f"{r['speedup']:.2f}x | {r['max_abs_diff']:.1e} |"
        for r in rows
    ]
    settings = dict(
        backbone=backbone,
        image_size=image_size,
        threads=threads,
        video_batch=video_batch,
        rounds=rounds,
        num_classes=num_classes,
    )
    return {"machine": describe_machine(), "settings": settings, "rows": rows, "markdown": "\n".join(lines) + "\n"}
