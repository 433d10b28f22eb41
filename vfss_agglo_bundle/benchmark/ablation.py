"""Before/after per-frame CPU latency of each inference setting of the segmenter, measured interleaved."""

from __future__ import annotations

import copy
import statistics
import time
from typing import Any

import torch
from vfss_agglo_bundle.benchmark.machine import cpu_model, describe_machine
from vfss_agglo_bundle.benchmark.measure import random_images
from vfss_agglo_bundle.data.tasks import NUM_DEFAULT_TASKS
from vfss_agglo_bundle.networks.fusion import optimize_for_inference
from vfss_agglo_bundle.networks.segmenter import VFSSSegmenter

__all__ = ["inference_ablation"]


def inference_ablation(
    backbone: str = "efficientvit_b0",
    image_size: int = 256,
    threads: int = 2,
    video_batch: int = 8,
    rounds: int = 30,
    num_classes: int = NUM_DEFAULT_TASKS,
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
    video = random_images(video_batch, image_size, torch.device("cpu"))
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
        for (name, _, images, _, n_threads), t, diff in zip(variants, times, diffs, strict=True)
    ]
    lines = [
        f"## Faster CPU inference: {backbone} segmenter, {image_size}x{image_size}, {threads} threads",
        "",
        f"Median of {rounds} interleaved rounds (per frame), on {cpu_model()}, torch {torch.__version__}.",
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
