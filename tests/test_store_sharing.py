"""The teacher store filled by several processes (torchrun, gloo): each rank fills a disjoint share of the
(teacher, frame, view) entries, the result is byte-identical to a one-process fill at the same threads per process,
a half-filled store resumes with another number of processes, and a rank that fails stops the others with an error."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from vfss_agglo_bundle.data.datalist import load_datalist
from vfss_agglo_bundle.phantom.dataset import synthesize_dataset

TEACHERS = "hed,ct_clip_r152,hog"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _fill_command(datalist: Path, cache: Path, processes: int, views: int = 2) -> list[str]:
    launcher = [sys.executable] if processes == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                        f"--nproc_per_node={processes}"]  # fmt: skip
    return [*launcher, str(ROOT / "scripts/cache_teachers.py"), "--datalist", str(datalist), "--teachers", TEACHERS,
            "--preset", "tiny", "--cache_dir", str(cache), "--views", str(views), "--splits", "training",
            "--threads", "1"]  # fmt: skip


def _fill(datalist: Path, cache: Path, processes: int, views: int = 2) -> subprocess.CompletedProcess:
    command = _fill_command(datalist, cache, processes, views)
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV)


def _files(root: Path) -> dict[str, bytes]:
    """Every file of the store but the (empty) lock files the fill takes turns on."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.suffix != ".lock"}  # fmt: skip


@pytest.mark.slow
def test_two_processes_fill_the_same_store_as_one(tmp_path):
    datalist = synthesize_dataset(tmp_path / "data", studies=4, frames=3, test_frames=None, image_size=64)
    one = _fill(datalist, tmp_path / "one", 1)
    assert one.returncode == 0, one.stderr[-3000:]
    reference = _files(tmp_path / "one")
    entries = [name for name in reference if name.endswith(".safetensors")]
    assert len(entries) == 3 * 2 * 3 * 2  # 3 teachers x 2 training studies x 3 frames x 2 views
    assert one.stdout.count("KiB/frame") == 3

    # two runs (two study runners) start filling one store at once: they take turns, the second finds the entries
    both = [subprocess.Popen(_fill_command(datalist, tmp_path / "together", 1), cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=ENV) for _ in range(2)]  # fmt: skip
    logs = [p.communicate(timeout=300)[1] for p in both]
    assert [p.returncode for p in both] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    counts = [int(n) for n in re.findall(r"teacher \w+: (\d+) views to compute", "".join(logs))]
    assert sorted(counts) == [0, 0, 0, 12, 12, 12]  # each teacher's 12 entries computed once, by one of the two
    assert _files(tmp_path / "together") == reference

    two = _fill(datalist, tmp_path / "two", 2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert _files(tmp_path / "two") == reference  # every entry and meta.json, byte for byte
    assert two.stdout.count("KiB/frame") == 3  # rank 0 alone prints the summary

    # a fill stopped half-way (entries are written atomically: a stopped fill leaves whole files) resumes with 2
    shutil.copytree(tmp_path / "one", tmp_path / "resumed")
    removed = entries[::3]
    for name in removed:
        (tmp_path / "resumed" / name).unlink()
    resumed = _fill(datalist, tmp_path / "resumed", 2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _files(tmp_path / "resumed") == reference


@pytest.mark.slow
def test_a_failing_rank_stops_the_others_with_an_error(tmp_path):
    """The second training frame (rank 1's first entry at one view) is corrupt: rank 1 raises its own error naming
    the file, rank 0 (which filled its share) one naming rank 1, and nobody waits for the barrier's timeout."""
    datalist = synthesize_dataset(tmp_path / "data", studies=4, frames=2, test_frames=None, image_size=64)
    broken = Path(load_datalist(datalist, "training")[1]["image"])
    broken.write_bytes(b"not a png")
    result = _fill(datalist, tmp_path / "cache", 2, views=1)
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert "rank(s) [1] failed in filling the teacher store; their errors are in their logs" in log
    assert str(broken) in log
