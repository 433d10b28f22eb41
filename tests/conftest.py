"""What every test module shares: offline model hubs, the torch thread count, the repository root, a finished bundle.

Set here, before any test module imports torch, transformers or open_clip.
"""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded: tiny teachers are built from configs
# OpenMP threads yield after a short spin: with the default spinning, 2 torch threads on 2 shared cores can run
# 30x slower whenever another process is busy
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

ROOT = Path(__file__).resolve().parents[1]
TORCH_THREADS = 2


def pytest_configure(config):
    import torch

    torch.set_num_threads(TORCH_THREADS)


@pytest.fixture(scope="session")
def finished(tmp_path_factory) -> Path:
    """A bundle folder holding a finished tiny training run (tests/finished_bundle.py); tests break copies of it."""
    from finished_bundle import run_bundle

    root = tmp_path_factory.mktemp("finished")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)
        run_bundle("training", root)
    assert (root / "models/model.pt").is_file() and (root / "eval/report.json").is_file()
    return root
