"""One run at a time on a bundle folder: `training` and `evaluating` hold ``<bundle_root>/.run.lock`` while they run.

The lock is an OS advisory lock (``fcntl.flock``) on that file, held by the process until it exits, so it can never
be left behind by a run that died: the file may remain, naming the dead holder, and the next run takes it over with
a message. The file says who holds it (pid, host, command, start time), so a refused run names its holder. Under
torchrun only rank 0 takes it (the other ranks are the same run). Runs that only share a dataset or a teacher store
(the study's runs, each with its own bundle folder) never block each other. Another ``lock_file`` name is another,
independent lock on the same folder (the study's runners claim a run's folder with one while its `training` holds
``.run.lock``). Local file systems only: ``flock`` on a network file system may not exclude a run on another machine.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import IO

from vfss_agglo_bundle.utils.distributed import is_main_process
from vfss_agglo_bundle.utils.io import PathLike

__all__ = ["LOCK_FILE", "BundleInUseError", "lock_bundle", "release_bundle"]

logger = logging.getLogger(__name__)

LOCK_FILE = ".run.lock"
_held: dict[Path, IO[str]] = {}


class BundleInUseError(RuntimeError):
    """Another live run holds the bundle folder."""


def _holder(handle: IO[str]) -> dict:
    handle.seek(0)
    try:
        return json.loads(handle.read() or "{}")
    except json.JSONDecodeError:
        return {}


def lock_bundle(bundle_root: PathLike, run: str = "training", lock_file: str = LOCK_FILE) -> Path | None:
    """Take the bundle folder's lock ``lock_file`` for this process (rank 0 only; a no-op when this process holds it
    already).

    Returns the lock file (None on other ranks).

    Raises:
        BundleInUseError: another live process holds it; the message names it.
    """
    if not is_main_process():
        return None
    path = Path(bundle_root) / lock_file
    if path in _held:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 - held open until the process exits
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(handle)
        handle.close()
        raise BundleInUseError(
            f"{bundle_root} is in use by another run: {holder.get('run', 'a run')} (pid {holder.get('pid', '?')} on "
            f"{holder.get('host', '?')}, started {holder.get('started', '?')}: {holder.get('command', '?')}). Wait for "
            "it to finish, or give this run another --bundle_root."
        ) from None
    previous = _holder(handle)
    if previous.get("pid"):
        logger.warning("%s: taking over the lock of a run that is no longer running (%s, pid %s, started %s)",
                       path, previous.get("run"), previous.get("pid"), previous.get("started"))  # fmt: skip
    handle.seek(0)
    handle.truncate()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    holder = {"run": run, "pid": os.getpid(), "host": socket.gethostname(), "started": started}
    handle.write(json.dumps({**holder, "command": " ".join(sys.argv)}))
    handle.flush()
    _held[path] = handle
    return path


def release_bundle(bundle_root: PathLike, lock_file: str = LOCK_FILE) -> None:
    """Release this process's lock ``lock_file`` on the bundle folder (the file is emptied: nobody holds it)."""
    path = Path(bundle_root) / lock_file
    handle = _held.pop(path, None)
    if handle is not None:
        handle.seek(0)
        handle.truncate()
        handle.flush()
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


@atexit.register
def _release_all() -> None:
    for path in list(_held):
        release_bundle(path.parent, path.name)
