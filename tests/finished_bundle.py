"""Helpers of the tests that break a copy of a finished bundle folder: the tiny run that finishes it, a digest of
every file in it, and the messages of an error and of the errors it was raised from."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import monai.bundle
from vfss_agglo_bundle.workflow.lock import LOCK_FILE

TINY = dict(phantom_studies=3, phantom_frames=4, phantom_test_frames=4, distill_frames_per_study=100, image_size=64,
            teacher_preset="tiny", teachers=["medsam"], distill_epochs=1, seg_epochs=1, val_interval=1,
            distill_batch_size=2, seg_batch_size=2)  # fmt: skip
SIZE = TINY["image_size"]


def run_bundle(run_id: str, root: Path, config: str = "configs/train.yaml", **overrides) -> None:
    """``monai.bundle.run`` on ``root``; the YAML configs (training, evaluating) get the tiny settings under
    ``overrides``, ``inference.json`` only ``overrides``."""
    settings = {**TINY, **overrides} if config.endswith(".yaml") else overrides
    monai.bundle.run(run_id, config_file=config, bundle_root=str(root), **settings)


def tree(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root`` (the run lock aside)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file() and p.name != LOCK_FILE}  # fmt: skip


def messages(err: BaseException) -> str:
    """The messages of an exception and of every exception it was raised from (MONAI wraps config errors)."""
    seen: list[str] = []
    while err is not None and len(seen) < 20:
        seen.append(f"{type(err).__name__}: {err}")
        err = err.__cause__ or err.__context__
    return "\n".join(seen)


def phantom_datalist(root: Path) -> tuple[Path, dict]:
    """The phantom datalist of a bundle folder: its path and content."""
    path = root / "data/phantom/datalist.json"
    return path, json.loads(path.read_text())


def first_file(root: Path, key: str) -> Path:
    """The ``key`` ("image" or "label") file of the first training item."""
    path, content = phantom_datalist(root)
    return path.parent / content["training"][0][key]
