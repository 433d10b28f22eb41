"""One run at a time on a bundle folder: a second process is refused naming the holder, a lock left by a dead
process is taken over with a message, `training` refuses before writing anything, study-style runs with their own
bundle folders are not blocked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT
from test_training_run import TINY, bundle
from vfss_agglo_bundle.workflow.lock import LOCK_FILE, BundleInUseError, lock_bundle, release_bundle

HOLD = (
    "import sys, time; from vfss_agglo_bundle.workflow.lock import lock_bundle; "
    "lock_bundle(sys.argv[1], 'training'); print('held', flush=True); time.sleep(120)"
)


def _hold(root) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(root)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_process_is_refused_and_a_dead_holder_is_taken_over(tmp_path, caplog):
    holder = _hold(tmp_path)
    try:
        with pytest.raises(
            BundleInUseError, match=rf"{tmp_path} is in use by another run: training \(pid {holder.pid}"
        ):
            lock_bundle(tmp_path, "evaluating")
        assert lock_bundle(tmp_path, "study runner", lock_file="claim.lock") == tmp_path / "claim.lock"  # another lock
        release_bundle(tmp_path, lock_file="claim.lock")
        assert (tmp_path / "claim.lock").read_text() == ""
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    recorded = json.loads((tmp_path / LOCK_FILE).read_text())
    assert recorded["pid"] == holder.pid  # a killed holder leaves its name behind, but not the lock
    with caplog.at_level("WARNING"):
        assert lock_bundle(tmp_path, "evaluating") == tmp_path / LOCK_FILE
    assert f"taking over the lock of a run that is no longer running (training, pid {holder.pid}" in caplog.text
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert lock_bundle(tmp_path) == tmp_path / LOCK_FILE  # this process again: fine
    lock_bundle(tmp_path / "other")  # another bundle folder: independent
    release_bundle(tmp_path)
    release_bundle(tmp_path / "other")
    assert (tmp_path / LOCK_FILE).read_text() == ""


def test_training_refuses_a_folder_in_use_before_any_work(tmp_path):
    holder = _hold(tmp_path)
    try:
        started = time.time()
        result = bundle("training", "configs/train.yaml", "--bundle_root", str(tmp_path), *TINY, check=False)
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode != 0 and time.time() - started < 120
    assert f"is in use by another run: training (pid {holder.pid}" in result.stdout + result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_FILE]  # no data, models, logs or eval written
