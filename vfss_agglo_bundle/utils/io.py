"""Atomic file writing, JSON, torch files, file hashes and a lock between writers: the one place the package writes
files through.

Every writer goes through a temporary file in the target folder and ``os.replace``: a crash never leaves a
half-written file under the final name, and nothing is overwritten unless ``overwrite=True``.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PathLike = str | os.PathLike
logger = logging.getLogger(__name__)


class DataFormatError(ValueError):
    """A data file exists but cannot be used; the message names the file and says what to do."""


@contextmanager
def atomic_path(path: PathLike, overwrite: bool = False, suffix: str = "", keep_old: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    A write that fails (disk full, read-only folder, a crash) leaves ``path`` and its folder as they were.

    Args:
        path: final destination.
        overwrite: allow replacing an existing file (otherwise ``FileExistsError``).
        suffix: extension the temporary name must end with (writers such as nibabel pick the format from it).
        keep_old: once the new file is complete, an existing ``path`` is renamed to its timestamped name
            (:func:`keep_previous`) instead of being replaced.
    """
    path = Path(path)
    if path.exists() and not (overwrite or keep_old):
        raise FileExistsError(f"{path} already exists; refusing to overwrite it (delete it or pass overwrite=True).")
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
        os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the final file the usual permissions
        yield Path(tmp)
        if keep_old:
            keep_previous(path)
        os.replace(tmp, path)
    except OSError as err:
        message = (
            f"could not write {path} ({err.strerror or err}); any earlier {path.name} is unchanged. "
            "Free some space or choose a writable folder, then run again."
        )
        raise (OSError(err.errno, message) if err.errno is not None else OSError(message)) from err
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def keep_previous(path: PathLike) -> Path | None:
    """Rename an existing ``path`` to ``<stem>.<modification time><suffix>`` so a new one can be written; returns it."""
    path = Path(path)
    if not path.exists():
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(path.stat().st_mtime))
    kept = path.with_name(f"{path.stem}.{stamp}{path.suffix}")
    n = 1
    while kept.exists():
        kept = path.with_name(f"{path.stem}.{stamp}-{n}{path.suffix}")
        n += 1
    os.replace(path, kept)
    logger.info("kept the previous %s as %s", path, kept.name)
    return kept


def save_torch(obj: Any, path: PathLike, overwrite: bool = False) -> None:
    """``torch.save`` atomically, with byte-identical files for identical objects.

    ``torch.save`` names the records of its zip archive after the file it writes; saving through a buffer keeps
    the random temporary name out of the file, so checkpoint hashes compare runs.
    """
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path, overwrite=overwrite, suffix=".pt") as tmp:
        tmp.write_bytes(buffer.getvalue())


def write_json(path: PathLike, obj: Any, overwrite: bool = False, keep_old: bool = False) -> None:
    """Write ``obj`` as indented JSON, atomically (``overwrite`` and ``keep_old`` as in :func:`atomic_path`)."""
    with atomic_path(path, overwrite=overwrite, suffix=".json", keep_old=keep_old) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


def read_json(path: PathLike) -> Any:
    """Read a JSON file with an error that names it when it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataFormatError(f"{path} is not valid JSON ({e}); fix or regenerate it.") from e


def write_text(path: PathLike, text: str, overwrite: bool = False, keep_old: bool = False) -> None:
    """Write ``text`` atomically (``overwrite`` and ``keep_old`` as in :func:`atomic_path`)."""
    with atomic_path(path, overwrite=overwrite, suffix=Path(path).suffix, keep_old=keep_old) as tmp:
        tmp.write_text(text)


@contextmanager
def exclusive_lock(path: PathLike) -> Iterator[None]:
    """Hold an OS lock (``flock``) on ``path``, created if missing, for the block: other processes wait at the start
    of theirs until it ends (released when its holder exits, however it exits)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def natural_key(name: str) -> list:
    """Sort key that orders the numbers in a name by value: ``frame2`` before ``frame10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def file_sha256(path: PathLike) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
