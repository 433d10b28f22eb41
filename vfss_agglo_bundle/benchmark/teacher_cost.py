"""What each teacher costs: seconds a frame at two input sizes, parameters, FLOPs, bytes a frame in the teacher store;
and the wall time of a teacher-store fill with one process and with two (gloo), with how their stores compare.

Teachers with an ``input_size`` attribute (hed, ct_clip_r152, hog) are timed at each size by running them at that
input size; the others have one fixed input (LiteMedSAM: 256, the ViTs: their own) and get one column.
"""

from __future__ import annotations

import copy
import os
import socket
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save
from vfss_agglo_bundle.benchmark.measure import count_flops, count_params, measure, random_images
from vfss_agglo_bundle.data.datalist import load_datalist
from vfss_agglo_bundle.data.feature_store import entry_digest
from vfss_agglo_bundle.phantom.dataset import synthesize_dataset
from vfss_agglo_bundle.teachers.base import Teacher
from vfss_agglo_bundle.teachers.prepare import fill_teacher_stores
from vfss_agglo_bundle.teachers.registry import build_teacher
from vfss_agglo_bundle.utils.distributed import init_distributed, shutdown_distributed

__all__ = ["store_bytes_per_frame", "store_fill_processes", "teacher_cost"]


def _at_size(teacher: Teacher, size: int) -> Teacher | None:
    """``teacher`` run at input ``size`` (a shallow copy sharing its weights; its ``grid`` attribute stays the
    original's, the outputs have the new one), or None for a fixed-input teacher."""
    if getattr(teacher, "input_size", None) is None:
        return None
    sized = copy.copy(teacher)
    sized.input_size = int(size)
    return sized


def store_bytes_per_frame(dense_shape: Sequence[int], summary_dim: int | None) -> int:
    """Bytes of one (frame, view) entry of the teacher store: a dense map ``[C, h, w]`` and a summary ``[D]`` (or
    None), safetensors, float16, with its checksum."""
    tensors = {"dense": torch.zeros(*dense_shape, dtype=torch.float16)}
    if summary_dim is not None:
        tensors["summary"] = torch.zeros(summary_dim, dtype=torch.float16)
    return len(save(tensors, metadata={"sha256": entry_digest(tensors)}))


def teacher_cost(
    names: Sequence[str],
    sizes: Sequence[int] = (256, 512),
    teacher_dir: str | os.PathLike | None = None,
    threads: int = 2,
    repeats: int = 5,
) -> dict[str, Any]:
    """One row per teacher (full preset: real weights where they ship or lie in ``teacher_dir``): parameters, and
    per input size the GFLOPs and seconds of one frame (batch 1, median); the store KiB a frame at each size."""
    torch.set_num_threads(int(threads))
    device = torch.device("cpu")
    rows = []
    for name in names:
        teacher = build_teacher(name, teacher_dir, "full")
        row: dict[str, Any] = {"teacher": name, "params_m": count_params(teacher) / 1e6, "sizes": {}}
        for size in sizes:
            sized = _at_size(teacher, size)
            if sized is None and size != sizes[0]:
                continue
            sized = sized or teacher
            x = sized.preprocess(random_images(1, size, device))
            with torch.inference_mode():
                out = sized.encode(x)
                flops = count_flops(lambda sized=sized, x=x: sized.encode(x))
                timing = measure(lambda sized=sized, x=x: sized.encode(x), 1, device, warmup=1, repeats=repeats)
            summary_dim = None if out.summary is None else int(out.summary.shape[1])
            row["sizes"][str(size)] = {
                "input": "x".join(str(d) for d in x.shape[1:]),
                "gflops": flops / 1e9,
                "seconds": timing.median_ms / 1e3,
                "dense": "x".join(str(d) for d in out.dense.shape[1:]),
                "summary": summary_dim,
                "store_kib": store_bytes_per_frame(out.dense.shape[1:], summary_dim) / 1024,
            }
        rows.append(row)
        del teacher, sized, x, out  # the copy shares the weights: release both before the next teacher
    return {"threads": int(threads), "sizes": [int(s) for s in sizes], "rows": rows}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fill_worker(rank: int, world: int, port: int, threads: int, kwargs: dict[str, Any]) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world)
    )
    torch.set_num_threads(threads)
    if world > 1:
        init_distributed(torch.device("cpu"))
    fill_teacher_stores(**kwargs)
    shutdown_distributed()


def _entries(root: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {p.relative_to(root).as_posix(): load_file(p) for p in sorted(root.rglob("*.safetensors"))}


def _compare(a: Path, b: Path) -> dict[str, Any]:
    """How two stores of the same entries compare: identical files, and the largest difference relative to the
    largest value of its tensor (float16 rounding is 2**-11 of a value)."""
    # every file but the (empty) locks the fill takes turns on, one per share: they differ with the processes
    files_a = {p.relative_to(a): p.read_bytes() for p in sorted(a.rglob("*")) if p.is_file() and p.suffix != ".lock"}
    files_b = {p.relative_to(b): p.read_bytes() for p in sorted(b.rglob("*")) if p.is_file() and p.suffix != ".lock"}
    if files_a.keys() != files_b.keys():
        return {"same_files": False, "entries": None, "byte_identical": None, "files": None,
                "max_relative_difference": None}  # fmt: skip
    ta, tb = _entries(a), _entries(b)
    worst = max(
        (
            ((x[k].float() - y[k].float()).abs().max() / x[k].float().abs().max().clamp_min(1e-12)).item()
            for (x, y) in ((ta[name], tb[name]) for name in ta)
            for k in x
        ),
        default=0.0,
    )
    return {
        "same_files": True,
        "entries": len(ta),
        "byte_identical": sum(files_a[k] == files_b[k] for k in files_a),
        "files": len(files_a),
        "max_relative_difference": worst,
    }


def store_fill_processes(
    teachers: Sequence[str] = ("litemedsam", "hed", "ct_clip_r152", "hog"),
    studies: int = 8,
    frames: int = 2,
    image_size: int = 256,
    runs: Sequence[tuple[int, int]] = ((1, 2), (2, 1), (1, 1)),
    teacher_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Fill one teacher store from scratch once per ``(processes, threads per process)`` of ``runs`` (spawned
    processes, gloo), over the training frames of a fresh phantom dataset; the wall time includes starting the
    processes and building the teachers. Each store is compared with the first one and with the one-process store at
    the same threads per process."""
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        datalist = synthesize_dataset(Path(tmp) / "data", studies=studies, frames=frames, image_size=image_size)
        items = load_datalist(datalist, "training")
        for processes, threads in runs:
            cache = Path(tmp) / f"store_{processes}x{threads}"
            kwargs = dict(
                teachers=list(teachers), items=items, cache_dir=str(cache), image_size=image_size,
                teacher_dir=teacher_dir,
            )  # fmt: skip
            start = time.perf_counter()
            mp.start_processes(
                _fill_worker, args=(processes, _free_port(), threads, kwargs), nprocs=processes, start_method="spawn"
            )
            results.append({"processes": processes, "threads": threads, "seconds": time.perf_counter() - start})
            results[-1]["store"] = cache
        for row in results:
            same_threads = next(r for r in results if r["processes"] == 1 and r["threads"] == row["threads"])
            row["against_first"] = _compare(results[0]["store"], row["store"])
            row["against_one_process_same_threads"] = _compare(same_threads["store"], row["store"])
        for row in results:
            row["store"] = str(row["store"].name)
    return {"teachers": list(teachers), "frames": len(items), "image_size": image_size, "runs": results}
