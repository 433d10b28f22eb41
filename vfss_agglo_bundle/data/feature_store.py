"""The teacher feature store on disk, and its one reader: what every consumer of stored features goes through.

Layout (one folder per teacher and signature)::

    <root>/<teacher name>-<signature[:12]>/
        meta.json                      # full signature, name, dims, stored grid, views, pooling, dtype
        <study>/<frame>.v<view>.safetensors
        standardize-<kind>.pt          # target standardisation statistics fitted on this store (optional)
        standardize-<kind>.json        # ... and the signature they were fitted on

Each ``.safetensors`` file holds one (frame, view): ``dense`` ``[C, h, w]`` float16 and, when the teacher has
one, ``summary`` ``[D]`` float16. One file per item because it is written atomically (temporary file in the same
folder, then ``os.replace``): a file that exists is complete, so completeness is checked by presence, an
interrupted fill resumes where it stopped, and a reader never sees a half-written item. safetensors reads
by memory map with a tiny header (no pickle, no zip), which keeps DataLoader workers fast; dense and summary
travel in the same file so they can never disagree. Each file's metadata holds ``sha256``, a digest of its tensors
(:func:`entry_digest`): :meth:`TeacherFeatureReader.read` checks it, so a flipped bit on disk stops a run naming the
file instead of being read as a feature, and the fill recomputes such an entry (files written before 0.9.0 have no
digest and are read unchecked).

:class:`TeacherFeatureReader` reads a store without loading any teacher (stage 1's data transforms, the adaptor
head shapes, the view strength, target standardisation, the run record). The store is written by
:class:`vfss_agglo_bundle.teachers.store.TeacherFeatureStore`, which runs the teacher.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from torch import Tensor
from vfss_agglo_bundle.utils.io import read_json, save_torch, write_json
from vfss_agglo_bundle.utils.state_dict import hash_state_dict, read_state_dict

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "META_FILE",
    "CorruptEntryError",
    "TeacherFeatureReader",
    "entry_digest",
    "feature_path",
    "read_entry",
    "read_meta",
    "store_directory",
]

FORMAT = "vfss-agglo-teacher-features"
FORMAT_VERSION = 1
META_FILE = "meta.json"


class CorruptEntryError(ValueError):
    """A stored entry whose bytes are not what was written (its digest differs, or it cannot be parsed)."""


def entry_digest(tensors: Mapping[str, Tensor]) -> str:
    """sha256 over an entry's tensors (:func:`~vfss_agglo_bundle.utils.state_dict.hash_state_dict`: names sorted,
    each with dtype, shape and raw bytes)."""
    return hash_state_dict(tensors)


def read_entry(path: Path) -> dict[str, Tensor]:
    """One entry's tensors as stored (float16), its digest checked when it has one.

    Raises:
        CorruptEntryError: the file cannot be parsed or its tensors do not match its digest.
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
            expected = (f.metadata() or {}).get("sha256")
    except (SafetensorError, OSError, ValueError) as err:
        raise CorruptEntryError(f"{path} cannot be read as a teacher feature entry ({err}).") from err
    if expected is not None and entry_digest(tensors) != expected:
        raise CorruptEntryError(f"{path} is corrupt: its tensors do not match the checksum written with them.")
    return tensors


def store_directory(root: str | os.PathLike, name: str, signature: str) -> Path:
    """``<root>/<name>-<signature[:12]>``: the folder of one teacher's features."""
    return Path(root) / f"{name}-{signature[:12]}"


def feature_path(directory: Path, key: str, view: int) -> Path:
    """File of (frame ``key``, ``view``) in a store folder; ``key`` is a relative path like ``s000/0000``."""
    parts = str(key).split("/")
    if any(part in ("", ".", "..") or "\\" in part for part in parts):
        raise ValueError(f"frame key {key!r} is not a relative path of plain names (like 's000/0000').")
    return directory.joinpath(*parts[:-1], f"{parts[-1]}.v{int(view)}.safetensors")


def read_meta(directory: Path) -> dict[str, Any]:
    """A store folder's ``meta.json``; a corrupt one is named with what to do."""
    path = directory / META_FILE
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is corrupt ({e}); delete {directory} and fill the store again.") from e


class TeacherFeatureReader:
    """Reads one teacher's stored features without loading the teacher (picklable, for DataLoader workers).

    Args:
        root: the cache root given to the store.
        name: teacher name.
        signature: the teacher's full signature; ``None`` picks the only store of ``name`` under ``root``.

    Attributes:
        meta: the store's ``meta.json``; ``dense_dim``, ``grid``, ``summary_dim``, ``views`` and
            ``view_strength`` are read from it.
    """

    def __init__(self, root: str | os.PathLike, name: str, signature: str | None = None) -> None:
        root = Path(root)
        if signature is None:
            found = sorted(p for p in root.glob(f"{name}-*") if (p / META_FILE).is_file())
            if len(found) != 1:
                raise FileNotFoundError(
                    f"expected exactly one feature store for teacher {name!r} under {root}, found "
                    f"{[p.name for p in found]}; pass the teacher signature, or fill the store "
                    "(scripts/cache_teachers.py)."
                )
            self.directory = found[0]
        else:
            self.directory = store_directory(root, name, signature)
        if not (self.directory / META_FILE).is_file():
            raise FileNotFoundError(
                f"no teacher feature store at {self.directory} (no {META_FILE}); fill it first with "
                "scripts/cache_teachers.py or vfss_agglo_bundle.teachers.store.fill_store."
            )
        self.meta = read_meta(self.directory)
        if self.meta.get("name") != name or (signature is not None and self.meta.get("signature") != signature):
            raise ValueError(
                f"{self.directory / META_FILE} belongs to teacher {self.meta.get('name')!r} with signature "
                f"{self.meta.get('signature')}, not {name!r} with {signature}; delete the folder and fill it again."
            )
        self.name = name
        self.signature: str = self.meta["signature"]
        self.dense_dim: int = self.meta["dense_dim"]
        self.grid: tuple[int, int] = tuple(self.meta["grid"])
        self.summary_dim: int | None = self.meta["summary_dim"]
        self.views: int = self.meta["views"]
        self.view_strength: dict[str, Any] = self.meta["view_strength"]

    def path(self, key: str, view: int = 0) -> Path:
        """File of (frame ``key``, ``view``)."""
        return feature_path(self.directory, key, view)

    def stored(self) -> list[tuple[str, int]]:
        """Every ``(frame key, view)`` on disk, sorted."""
        found = []
        for path in sorted(self.directory.rglob("*.safetensors")):
            stem, _, view = path.name.removesuffix(".safetensors").rpartition(".v")
            found.append(((path.parent / stem).relative_to(self.directory).as_posix(), int(view)))
        return found

    def has(self, key: str, view: int = 0) -> bool:
        """Whether (frame ``key``, ``view``) is stored."""
        return self.path(key, view).is_file()

    def missing(self, keys: Iterable[str], views: int | None = None) -> list[tuple[str, int]]:
        """``(key, view)`` pairs among ``keys`` x ``range(views)`` (default: the store's views) not on disk."""
        return [(k, v) for k in keys for v in range(self.views if views is None else views) if not self.has(k, v)]

    def read(self, key: str, view: int = 0) -> dict[str, Tensor]:
        """``{"dense": [C, h, w] float32, "summary": [D] float32 (if stored)}`` of (frame ``key``, ``view``)."""
        path = self.path(key, view)
        if not path.is_file():
            raise FileNotFoundError(
                f"teacher {self.name!r} has no features for frame {key!r} view {view} ({path}); fill the store "
                f"for these items and views with scripts/cache_teachers.py."
            )
        try:
            tensors = read_entry(path)
        except CorruptEntryError as err:
            raise CorruptEntryError(
                f"{err} Refill it: run the same `training` command again (its teacher-store step recomputes corrupt "
                f"entries), or python scripts/cache_teachers.py --datalist <datalist.json> --teachers {self.name} "
                f"--cache_dir {self.directory.parent}."
            ) from err
        return {name: tensor.float() for name, tensor in tensors.items()}

    def statistics_files(self, kind: str) -> tuple[Path, Path]:
        """``(standardize-<kind>.pt, standardize-<kind>.json)``: statistics ``kind`` fitted on this store, and the
        record of the teacher signature they were fitted on."""
        return self.directory / f"standardize-{kind}.pt", self.directory / f"standardize-{kind}.json"

    def read_statistics(self, kind: str) -> dict[str, Tensor] | None:
        """The target standardisation statistics ``kind`` saved with this store (a flat dict of tensors), or
        ``None`` when none are saved yet.

        Raises:
            ValueError: they were fitted on a store of another teacher signature, or the file is not a dict of
                tensors (the message says which files to delete to refit).
        """
        stats, record = self.statistics_files(kind)
        if record.exists():
            fitted_on = read_json(record).get("signature")
            if fitted_on != self.signature:
                raise ValueError(
                    f"{record} was fitted on teacher signature {fitted_on!r}, but the store in {self.directory} is "
                    f"{self.signature!r}; delete {record} and {stats} to refit them."
                )
        if not stats.exists():
            return None
        return read_state_dict(stats, f"{kind} statistics of teacher {self.name!r}")

    def write_statistics(self, kind: str, state: Mapping[str, Tensor], views: int) -> dict[str, Tensor]:
        """Save statistics ``kind`` fitted on ``views`` stored views of this store, atomically and never over
        existing ones; returns the statistics now saved (another run sharing the store may have saved its own,
        identical ones first: those are kept and returned)."""
        stats, record = self.statistics_files(kind)
        # another run sharing this store may save them meanwhile (same store, same statistics): whichever file it
        # wrote first is kept, ours is dropped
        with contextlib.suppress(FileExistsError):
            write_json(record, {"kind": kind, "teacher": self.name, "signature": self.signature, "views": views})
        with contextlib.suppress(FileExistsError):
            save_torch({k: v.detach().cpu() for k, v in state.items()}, stats)
        return read_state_dict(stats, f"{kind} statistics of teacher {self.name!r}")
