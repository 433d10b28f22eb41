"""configs/multi_gpu_train.yaml: the DDP overlay of the `training` run, checked against train.yaml and run with two
processes on the CPU (gloo) through torchrun, as a user runs it on GPUs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT
from vfss_agglo_bundle.utils.io import file_sha256, read_json

OVERLAY = ROOT / "configs/multi_gpu_train.yaml"
LOGGING_HANDLERS = {"StatsHandler", "TensorBoardStatsHandler", "vfss_agglo_bundle.handlers.ProgressHandler"}
TINY = [
    "--phantom_studies",
    "4",
    "--phantom_frames",
    "4",
    "--phantom_test_frames",
    "4",
    "--distill_frames_per_study",
    "100",
    "--image_size",
    "64",
    "--teacher_preset",
    "tiny",
    "--teachers",
    "['medsam','rad_dino','medclip']",
    "--distill_epochs",
    "2",
    "--seg_epochs",
    "2",
    "--val_interval",
    "1",
    "--distill_batch_size",
    "2",
    "--seg_batch_size",
    "2",
]

# Appended to each stage's handlers: at every epoch end each rank saves its own copy of what it trains.
RANK_DUMPS = """
copy_of: "$lambda m: {'params': {k: v.detach().as_subclass(torch.Tensor).clone() for k, v in m.named_parameters()},
  'buffers': {k: v.as_subclass(torch.Tensor).clone() for k, v in m.named_buffers()}}"
rank_file: "$lambda stage: @bundle_root + '/rank' + str(dist.get_rank()) + '_' + stage + '.pt'"
+distill#handlers:
  - _target_: StatsHandler
    iteration_log: false
    epoch_print_logger: "$lambda engine: torch.save({'model': @copy_of(@distill#model),
      'balancer': @copy_of(@distill#balancer)}, @rank_file('distillation'))"
+train#handlers:
  - _target_: StatsHandler
    iteration_log: false
    epoch_print_logger: "$lambda engine: torch.save({'model': @copy_of(@network_def)}, @rank_file('segmentation'))"
"""


def _yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


WATCHERS = LOGGING_HANDLERS | {"vfss_agglo_bundle.handlers.MultiTaskReport"}


def test_only_rank_0_watches_the_run_and_the_overlay_addresses_no_handler():
    """Each section lists the handlers that only watch a run in `handlers` (disabled on every rank but rank 0, so a
    worker never builds them), and names the ones that define it, attached first; the overlay touches no handler."""
    train, common, overlay = _yaml(ROOT / "configs/train.yaml"), _yaml(ROOT / "configs/common.yaml"), _yaml(OVERLAY)
    assert not any("handlers" in key for key in overlay) and "test" not in overlay
    assert common["is_worker"] == "$not vfss_agglo_bundle.utils.distributed.is_main_process()"
    sections = {
        "distill": (train["distill"], train["distill"]["trainer"]["train_handlers"]),
        "train": (train["train"], train["train"]["trainer"]["train_handlers"]),
        "validate": (train["validate"], train["validate"]["evaluator"]["val_handlers"]),
        "test": (common["test"], common["test"]["evaluator"]["val_handlers"]),
    }
    for name, (section, attached) in sections.items():
        watchers = section["handlers"]
        assert [h["_target_"] for h in watchers if h["_target_"] not in WATCHERS] == [], name
        assert all(h["_disabled_"] == "@is_worker" for h in watchers), name
        named = re.findall(rf"@{name}#(\w+)", attached)
        assert "handlers" in named, name  # the watchers are attached too
        for key in set(named) - {"handlers"}:
            assert "_disabled_" not in section[key], (name, key)  # what defines the run runs on every rank
    # an overlay replaces whole top-level keys: every step of train.yaml's initialize must still be there
    assert [step for step in train["initialize"] if step not in overlay["initialize"]] == []
    assert overlay["finalize"] == ["$vfss_agglo_bundle.utils.distributed.shutdown_distributed()"]
    assert "DistributedDataParallel" in overlay["distill#network"]["_target_"]
    assert "DistributedDataParallel" in overlay["network"]["_target_"]


def test_main_process_first_orders_the_ranks_and_stops_the_others_when_rank_0_fails(monkeypatch):
    from vfss_agglo_bundle.utils import distributed

    ran = []
    with distributed.main_process_first("a step"):  # one process: a plain block
        ran.append("single")
    assert ran == ["single"]
    calls: list[str] = []
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed, "barrier", lambda: calls.append("barrier"))
    flags: list[int] = []
    monkeypatch.setattr(distributed.idist, "broadcast", lambda t, src: flags.append(int(t)) or t)
    with pytest.raises(ValueError, match="disk"):  # rank 0 fails: it still releases the others, flag 0
        with distributed.main_process_first("a step"):
            calls.append("rank 0 works")
            raise ValueError("disk full")
    assert calls == ["rank 0 works", "barrier"] and flags == [0]
    monkeypatch.setattr(distributed.idist, "get_rank", lambda: 1)
    monkeypatch.setattr(distributed.idist, "broadcast", lambda t, src: torch.tensor(0))
    calls.clear()
    with pytest.raises(RuntimeError, match="rank 0 failed in a step"):  # a worker waits, then stops
        with distributed.main_process_first("a step"):
            calls.append("worker works")
    assert calls == ["barrier"]
    monkeypatch.setattr(distributed.idist, "broadcast", lambda t, src: torch.tensor(1))
    with distributed.main_process_first("a step"):  # rank 0 succeeded: the worker runs the block after it
        calls.append("worker works")
    assert calls == ["barrier", "barrier", "worker works"]


def test_every_process_succeeds_names_the_failed_ranks(monkeypatch):
    from vfss_agglo_bundle.utils import distributed

    ran = []
    with distributed.every_process_succeeds("a share"):  # one process: a plain block
        ran.append("single")
    assert ran == ["single"]
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    flags: list[list[int]] = []
    others = [0, 1, 0]  # what ranks 1-3 report: rank 2 failed

    def all_gather(t):
        flags.append(t.tolist())
        return torch.tensor(t.tolist() + others)

    monkeypatch.setattr(distributed.idist, "all_gather", all_gather)
    with pytest.raises(RuntimeError, match=r"rank\(s\) \[2\] failed in a share"):  # this rank worked, rank 2 did not
        with distributed.every_process_succeeds("a share"):
            ran.append("rank 0 works")
    with pytest.raises(ValueError, match="disk"):  # this rank fails: it still reports, then raises its own error
        with distributed.every_process_succeeds("a share"):
            raise ValueError("disk full")
    others[:] = [0, 0, 0]
    with distributed.every_process_succeeds("a share"):
        ran.append("all work")
    assert flags == [[0], [1], [0]] and ran == ["single", "rank 0 works", "all work"]


def test_shares_of_the_store_are_disjoint_and_cover_every_entry(tmp_path):
    from vfss_agglo_bundle.teachers.registry import build_teacher
    from vfss_agglo_bundle.teachers.store import TeacherFeatureStore

    store = TeacherFeatureStore(tmp_path, build_teacher("hog", None, "tiny"), views=2)
    items = [{"study": f"s{i // 3}", "frame": i % 3} for i in range(7)]
    every = {(key, view) for _, key, view in store.pending(items)}
    assert len(every) == 14
    for world in (2, 3):
        shares = [{(key, view) for _, key, view in store.pending(items, (rank, world))} for rank in range(world)]
        assert set().union(*shares) == every and sum(map(len, shares)) == len(every)  # disjoint, complete
        assert all(
            {key for key, _ in a}.isdisjoint({key for key, _ in b}) for a in shares for b in shares if a is not b
        )


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_equal(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{what}: {different[:5]}"


def _flat(copy: dict) -> dict:
    """A ``copy_of`` dump as a state dict."""
    return {**copy["params"], **copy["buffers"]}


@pytest.mark.slow
def test_two_processes_on_cpu_train_identical_students(tmp_path):
    dumps = tmp_path / "rank_dumps.yaml"
    dumps.write_text(RANK_DUMPS)
    root = tmp_path / "bundle"
    configs = repr(["configs/train.yaml", "configs/multi_gpu_train.yaml", str(dumps)])
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        configs,
        "--bundle_root",
        str(root),
        *TINY,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-6000:]

    models = root / "models"
    stages = ("distillation", "segmentation")
    ranks = {stage: [_state(root / f"rank{r}_{stage}.pt") for r in (0, 1)] for stage in stages}
    for stage, outputs in (("distillation", ["student_encoder.pt"]), ("segmentation", ["model.pt"])):
        record = read_json(models / f"{stage}.done.json")
        assert record["outputs"] == {name: file_sha256(models / name) for name in outputs}
        assert log.count(f"stage {stage}: done") == 1  # logged by rank 0 only
        rank0, rank1 = (dump["model"] for dump in ranks[stage])
        _assert_equal(rank0["params"], rank1["params"], f"{stage}: parameters of rank 0 and rank 1")
        # BatchNorm running statistics are per rank under DDP (rank 0's are saved); every other buffer is shared
        shared = [k for k in rank0["buffers"] if not k.endswith(("running_mean", "running_var"))]
        _assert_equal(
            {k: rank0["buffers"][k] for k in shared},
            {k: rank1["buffers"][k] for k in shared},
            f"{stage}: buffers of rank 0 and rank 1",
        )

    # the balancer (outside DDP, its gradients averaged by the trainer) is the same on both ranks
    # (last_weights, the mean weight of the rank's last batch, is logging state: each rank weighs its own samples)
    balancer0, balancer1 = (
        {k: v for k, v in _flat(dump["balancer"]).items() if k != "last_weights"} for dump in ranks["distillation"]
    )
    _assert_equal(balancer0, balancer1, "balancer of rank 0 and rank 1")
    saved = _state(models / "distillation_resume.pt")["objects"]["balancer"]
    _assert_equal(saved, {k: balancer0[k] for k in saved}, "balancer in the resume checkpoint vs rank 0's")

    # what rank 0 saved is what it trained
    trained = _flat(ranks["distillation"][0]["model"])
    student = {k.removeprefix("student."): v for k, v in trained.items() if k.startswith("student.")}
    _assert_equal(_state(models / "student_encoder.pt"), student, "student_encoder.pt vs rank 0's student")
    final = _state(models / "segmentation_resume.pt")["objects"]["model"]
    _assert_equal(final, _flat(ranks["segmentation"][0]["model"]), "segmentation_resume.pt vs rank 0's segmenter")

    # one writer: one report and no kept copies, TensorBoard files of a single process
    assert sorted(p.name for p in (root / "eval").glob("report*")) == ["report.csv", "report.json", "report.md"]
    test_frames = len(read_json(root / "data/phantom/datalist.json")["test"])
    assert read_json(root / "eval/report.json")["num_frames"] == test_frames  # every test frame, counted once
    events = list((root / "logs").rglob("events.out.tfevents.*"))
    assert events and len({p.name.rsplit(".", 2)[1] for p in events}) == 1, [p.name for p in events]  # <host>.<pid>.<n>

    # the same command again: every rank computes the same stage fingerprints as rank 0 recorded, so both skip
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    log = again.stdout + again.stderr
    assert again.returncode == 0, log[-6000:]
    for stage in stages:
        assert log.count(f"stage {stage}: outputs found") == 2, log[-3000:]  # logged by each of the two ranks


def test_shutdown_distributed_frees_the_group_held_by_ddp_wrappers(tmp_path):
    """A DDP wrapper the config still holds must not keep the gloo group alive until interpreter exit."""
    import torch.distributed as dist
    from vfss_agglo_bundle.utils.distributed import shutdown_distributed

    shutdown_distributed()  # no group: nothing to do
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2))
    ddp(torch.ones(1, 2)).sum().backward()
    shutdown_distributed()
    assert not dist.is_initialized()
    assert not {"reducer", "logger", "process_group"} & set(vars(ddp))
