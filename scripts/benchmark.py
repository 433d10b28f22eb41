"""Benchmark the student segmenter against its teachers, and the faster CPU inference settings.

    # students (all supported backbones), LiteMedSAM (real weights), the other teachers as tiny stand-ins
    python scripts/benchmark.py run
    # real speed ratios: full-size teachers with random weights, MedSAM ViT-B@1024 included (~22 s a frame on CPU)
    python scripts/benchmark.py run --backbones efficientvit_b0,convnext_atto --full_size_random --include_medsam
    # real teacher weights where present under --teacher_dir; GPU rows come by themselves when CUDA is available
    python scripts/benchmark.py run --teacher_dir weights/ --threads 2 --batch_size 8 --out_dir eval/benchmark
    # before/after of each CPU inference setting (channels_last, inference_mode, conv-BN folding, threads, batching)
    python scripts/benchmark.py ablate --backbone efficientvit_b0
    # end to end: a 256x256 video of 300 frames -> masks -> kinematics files, through configs/inference.json
    python scripts/benchmark.py video --num_frames 300 --checkpoint models/model.pt
    # memory of `inferring` (default outputs) on a 10,000-frame 1512x920 video and a 4K one: peak and growth
    python scripts/benchmark.py soak
    # one training step split into data, forward, backward and optimizer step, 0.7.0's and this version's interleaved
    python scripts/benchmark.py train
    # each teacher's seconds a frame at 256 and 512, parameters, GFLOPs and store KiB a frame
    python scripts/benchmark.py teachers --teachers litemedsam,hed,ct_clip_r152,hog
    # the teacher-store fill with 1 process x 2 threads, 2 processes x 1 thread and 1 x 1, and how the stores compare
    python scripts/benchmark.py store_fill

Writes ``<out_dir>/benchmark.{json,md}`` (``run``), ``<out_dir>/inference_ablation.{json,md}`` (``ablate``) or
``<out_dir>/video_throughput.json`` (``video``), ``<out_dir>/training_throughput.{json,md}`` (``train``),
``<out_dir>/teacher_cost.json`` (``teachers``), ``<out_dir>/store_fill.json`` (``store_fill``),
``<out_dir>/soak.json`` (``soak``); an
existing report is kept beside it under its timestamp. Prints the Markdown table and the teacher/student speed
ratios at batch 1.

``GOMP_SPINCOUNT`` defaults to 10000 here (set before the package, and so torch, is imported; set it in the
environment to override): with OpenMP's default spinning,
torch with 2 threads on a 2-core machine runs up to 100x slower whenever another process is busy (measured: a
9 ms segmenter call took 2 s), which would make every timing on a shared machine meaningless; 10000 costs about
5-10% on an idle machine. ``OMP_WAIT_POLICY=PASSIVE`` protects as well but is 2.5x slower on an idle machine.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import fire
from vfss_agglo_bundle.data.tasks import NUM_DEFAULT_TASKS
from vfss_agglo_bundle.utils.cli import split_names


def run(
    backbones: str | Sequence[str] | None = None,
    teachers: str | Sequence[str] | None = None,
    teacher_dir: str | None = None,
    full_size_random: bool = False,
    include_medsam: bool = False,
    image_size: int = 256,
    batch_size: int = 8,
    num_classes: int = NUM_DEFAULT_TASKS,
    threads: int = 2,
    devices: str | Sequence[str] | None = None,
    optimized: bool = True,
    onnx: bool = True,
    onnx_dynamo: bool = True,
    distill: bool = True,
    warmup: int = 3,
    repeats: int = 30,
    max_seconds: float = 20.0,
    slow_seconds: float = 30.0,
    out_dir: str = "eval/benchmark",
) -> None:
    """Time students, teachers and distillation steps in one process; write JSON + Markdown, print the ratios.

    ``backbones`` defaults to every supported student, ``teachers`` to every teacher family.
    """
    from vfss_agglo_bundle.benchmark import TEACHER_NAMES, run_benchmark, to_markdown, write_report
    from vfss_agglo_bundle.networks.student import SUPPORTED_BACKBONES

    report = run_benchmark(
        backbones=split_names(SUPPORTED_BACKBONES if backbones is None else backbones),
        teachers=split_names(TEACHER_NAMES if teachers is None else teachers),
        teacher_dir=teacher_dir,
        full_size_random=full_size_random,
        include_medsam=include_medsam,
        image_size=image_size,
        batch_size=batch_size,
        num_classes=num_classes,
        threads=threads,
        devices=None if devices is None else split_names(devices),
        optimized=optimized,
        onnx=onnx,
        onnx_dynamo=onnx_dynamo,
        distill=distill,
        warmup=warmup,
        repeats=repeats,
        max_seconds=max_seconds,
        slow_seconds=slow_seconds,
    )
    json_path, md_path = write_report(report, out_dir)
    print(to_markdown(report))
    print("Teacher time / student time at batch 1 (median latency):")
    for device, table in report["ratios_batch1"].items():
        for student, row in table.items():
            ratios = ", ".join(f"{teacher} {ratio:,.1f}x" for teacher, ratio in row.items())
            print(f"  {device} {student}: {ratios}")
    print(f"wrote {json_path} and {md_path}")


def ablate(
    backbone: str = "efficientvit_b0",
    image_size: int = 256,
    threads: int = 2,
    video_batch: int = 8,
    rounds: int = 30,
    num_classes: int = NUM_DEFAULT_TASKS,
    out_dir: str = "eval/benchmark",
) -> None:
    """Before/after per-frame CPU latency of each inference setting, measured interleaved; writes JSON + Markdown."""
    from vfss_agglo_bundle.benchmark import inference_ablation, write_report

    report = inference_ablation(backbone, image_size, threads, video_batch, rounds, num_classes)
    json_path, md_path = write_report(report, out_dir, stem="inference_ablation")
    print(report["markdown"])
    print(f"wrote {json_path} and {md_path}")


def video(
    num_frames: int = 300,
    image_size: int = 256,
    fps: float = 30.0,
    student: str = "efficientvit_b0",
    threads: int = 2,
    checkpoint: str | None = None,
    out_dir: str = "eval/benchmark",
    repeats: int = 3,
) -> None:
    """Frames/s of `inferring` on a phantom video file, from decoding to the kinematics files; writes JSON.

    ``checkpoint``: a trained ``models/model.pt`` (its masks give the kinematics a spine to measure); default random
    weights of ``student``. ``repeats``: runs per variant, the median is reported (this machine's timings vary)."""
    from vfss_agglo_bundle.benchmark import video_throughput
    from vfss_agglo_bundle.utils.io import write_json

    report = video_throughput(num_frames, image_size, fps, student, threads, checkpoint=checkpoint, repeats=repeats)
    path = f"{out_dir}/video_throughput.json"
    write_json(path, report, keep_old=True)
    print(f"{num_frames} frames of {image_size}x{image_size} at {fps:g} frames/s, {student}, {threads} threads, "
          f"median of {repeats} run(s):")  # fmt: skip
    for row in report["rows"]:
        runs = ", ".join(f"{s:.1f}" for s in row["runs_s"])
        print(f"  {row['variant']}: {row['seconds']:.1f} s ({runs}), {row['frames_per_s']:.1f} frames/s "
              f"({row['swallows']} swallow(s) found, video fps read {row['fps_read']})")  # fmt: skip
    print(f"wrote {path}")


def soak(
    num_frames: int = 10_000,
    width: int = 1512,
    height: int = 920,
    big_frames: int = 120,
    checkpoint: str | None = None,
    out_dir: str = "eval/benchmark",
) -> None:
    """Peak resident memory of `inferring` with its default outputs on a ``num_frames`` video of ``width`` x ``height``
    and on a ``big_frames`` 4K video, and its growth between the first and last 1,000 frames (goal: < 1 GB peak,
    < 50 MB growth); writes JSON. The videos are written once into ``out_dir`` and reused."""
    from vfss_agglo_bundle.benchmark.soak import soak as run_soak
    from vfss_agglo_bundle.utils.io import write_json

    report = run_soak(num_frames, width, height, big_frames, video_dir=out_dir, checkpoint=checkpoint)
    path = f"{out_dir}/soak.json"
    write_json(path, report, keep_old=True)
    for name, row in report["rows"].items():
        size, minutes = f"{row['width']}x{row['height']}", row["seconds"] / 60
        print(f"{name}: {row['frames']} frames of {size} in {minutes:.1f} min: peak "
              f"RSS {row['peak_rss_mb']:.0f} MB; median RSS {row['first_window_mb']:.0f} MB over the first 1,000 "
              f"frames, {row['last_window_mb']:.0f} MB over the last: growth {row['growth_mb']:+.0f} MB")  # fmt: skip
    print(f"wrote {path}")


def train(
    config_file: str = "configs/train.yaml",
    image_size: int = 256,
    batch_size: int = 8,
    rounds: int = 10,
    threads: int = 2,
    out_dir: str = "eval/benchmark",
) -> None:
    """One training step split into forward, backward and optimizer step: 0.7.0's stage-2 step and this version's
    (``config_file``) interleaved, the encoder's share, validation, stage 1, and the data path; writes JSON +
    Markdown. Run from the bundle root."""
    from vfss_agglo_bundle.benchmark import training_throughput, write_report

    report = training_throughput(config_file, image_size, batch_size, rounds, threads)
    json_path, md_path = write_report(report, out_dir, stem="training_throughput")
    print(report["markdown"])
    print(f"wrote {json_path} and {md_path}")


def teachers(
    teachers: str | Sequence[str] = "litemedsam,hed,ct_clip_r152,hog",
    sizes: str | Sequence[int] = "256,512",
    teacher_dir: str | None = None,
    threads: int = 2,
    repeats: int = 5,
    out_dir: str = "eval/benchmark",
) -> None:
    """Each teacher's seconds a frame (batch 1, median) and GFLOPs at each input size, parameters and store KiB a
    frame (real weights: shipped, or under ``teacher_dir``); writes JSON and prints a Markdown table."""
    from vfss_agglo_bundle.benchmark import teacher_cost
    from vfss_agglo_bundle.utils.io import write_json

    sizes = [int(s) for s in split_names(sizes)]
    report = teacher_cost(split_names(teachers), sizes, teacher_dir, threads, repeats)
    path = f"{out_dir}/teacher_cost.json"
    write_json(path, report, keep_old=True)
    header = " | ".join(f"s a frame @{s} | GFLOPs @{s}" for s in sizes)
    print(f"| teacher | params (M) | input @{sizes[0]} | dense | summary | store KiB a frame | {header} |")
    print("|---" * (6 + 2 * len(sizes)) + "|")
    for row in report["rows"]:
        first = row["sizes"][str(sizes[0])]
        cells = " | ".join(
            f"{row['sizes'][str(s)]['seconds']:.3f} | {row['sizes'][str(s)]['gflops']:.1f}"
            if str(s) in row["sizes"] else "- (fixed input) | -"
            for s in sizes
        )  # fmt: skip
        print(f"| {row['teacher']} | {row['params_m']:.1f} | {first['input']} | {first['dense']} | "
              f"{first['summary'] or '-'} | {first['store_kib']:.1f} | {cells} |")  # fmt: skip
    print(f"wrote {path}")


def store_fill(
    teachers: str | Sequence[str] = "litemedsam,hed,ct_clip_r152,hog",
    studies: int = 8,
    frames: int = 2,
    image_size: int = 256,
    teacher_dir: str | None = None,
    out_dir: str = "eval/benchmark",
) -> None:
    """Wall time of one teacher-store fill with 1 process x 2 threads, 2 processes x 1 thread (gloo) and 1 x 1, over
    the training frames of a fresh phantom, and how each store compares with the others; writes JSON."""
    from vfss_agglo_bundle.benchmark import store_fill_processes
    from vfss_agglo_bundle.utils.io import write_json

    report = store_fill_processes(split_names(teachers), studies, frames, image_size, teacher_dir=teacher_dir)
    path = f"{out_dir}/store_fill.json"
    write_json(path, report, keep_old=True)
    print(f"teacher store of {report['teachers']} over {report['frames']} frames at {image_size}:")
    for row in report["runs"]:
        same, first = row["against_one_process_same_threads"], row["against_first"]
        if not (same["same_files"] and first["same_files"]):
            print(f"  {row['processes']} process(es) x {row['threads']} thread(s): {row['seconds']:.1f} s; the stores "
                  "hold different sets of files")  # fmt: skip
            continue
        print(f"  {row['processes']} process(es) x {row['threads']} thread(s): {row['seconds']:.1f} s; against 1 "
              f"process at the same threads: {same['byte_identical']}/{same['files']} files byte-identical; against "
              f"1 x 2: {first['byte_identical']}/{first['files']} identical, largest difference "
              f"{first['max_relative_difference']:.2e} of a tensor's largest value")  # fmt: skip
    print(f"wrote {path}")


def phantom(image_size: int = 256, studies: int = 8, frames: int = 24, out_dir: str = "eval/benchmark") -> None:
    """Frames/s of the phantom (image + labels of 12 structures) per version, with the CPU time (one core when
    CPU ~ wall); writes JSON."""
    from vfss_agglo_bundle.benchmark import phantom_speed
    from vfss_agglo_bundle.utils.io import write_json

    report = phantom_speed(image_size, studies, frames)
    path = f"{out_dir}/phantom_speed.json"
    write_json(path, report, keep_old=True)
    print(f"phantom rendering, {studies} studies x {frames} frames at {image_size}x{image_size}:")
    for row in report["rows"]:
        print(f"  {row['phantom']}: {row['frames_per_s']:.1f} frames/s ({row['seconds']:.1f} s wall, "
              f"{row['cpu_seconds']:.1f} s CPU)")  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")  # before torch (and its OpenMP) is loaded by run / ablate
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("vfss_agglo_bundle").setLevel(logging.INFO)  # progress per model, not the exporters' chatter
    fire.Fire(
        {
            "run": run,
            "ablate": ablate,
            "video": video,
            "train": train,
            "phantom": phantom,
            "teachers": teachers,
            "store_fill": store_fill,
            "soak": soak,
        }
    )
