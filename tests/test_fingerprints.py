"""Stage fingerprints come from the resolved config: every setting that changes a result changes them.

A tiny `training` run is finished once; then the configs are parsed again with one setting changed and the
stages are asked to run. Each changed setting must make its stage refuse (the existing message, now naming what
changed) instead of skipping with outputs trained under the old setting. Settings that do not change a result
(where the bundle folder is, the number of DataLoader workers) must leave the fingerprints as they are.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import monai.bundle
import pytest
import torch
from conftest import ROOT
from ignite.engine import Events
from monai.bundle import ConfigWorkflow
from monai.handlers import StatsHandler
from monai.transforms import RandGaussianNoised
from vfss_agglo_bundle.utils.io import file_sha256
from vfss_agglo_bundle.workflow.fingerprint import describe, differences, fingerprint

TINY = dict(phantom_studies=3, phantom_frames=4, phantom_test_frames=4, distill_frames_per_study=100, image_size=64,
            teacher_preset="tiny",
            teachers=["medsam"], distill_epochs=1, seg_epochs=1, val_interval=1, distill_batch_size=2,
            seg_batch_size=2)  # fmt: skip


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("finished")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)
        monai.bundle.run("training", config_file="configs/train.yaml", bundle_root=str(root), **TINY)
    return root


def _stages(root: Path, appended: dict[str, dict] | None = None, **overrides) -> tuple:
    """The two stages of `training` as its config builds them for ``root`` (nothing is run); ``appended``: config id
    of a handler list -> a handler config appended to it, as MONAI's ``--tracking`` appends its handlers."""
    workflow = ConfigWorkflow(
        config_file="configs/train.yaml",
        workflow_type="train",
        run_id="training",
        logging_file=False,
        bundle_root=str(root),
        **{**TINY, **overrides},
    )
    for handlers, handler in (appended or {}).items():
        workflow.parser[handlers].append(handler)
    workflow.initialize()
    for key in ("prepare_data", "teacher_store"):
        workflow.parser.get_parsed_content(key)
    return workflow.parser.get_parsed_content("distill#stage"), workflow.parser.get_parsed_content("train#stage")


CHANGES = {
    # setting: (overrides, the stage that must refuse, what the message says changed)
    "spatial_augment": ({"spatial_augment#zoom#prob": 0.5}, "segmentation", "prob: 0.8 -> 0.5"),
    "intensity_augment": ({"intensity_augment#2#std": 0.05}, "distillation", "std: 0.03 -> 0.05"),
    "dice lambda": ({"train#loss#lambda_dice": 0.7}, "segmentation", "lambda_dice: 0.5 -> 0.7"),
    "bce lambda": ({"train#loss#lambda_bce": 0.25}, "segmentation", "lambda_bce: 0.5 -> 0.25"),
    "autocast": ({"autocast": "float16"}, "segmentation", "dtype: "),
    "frames distilled per study": ({"distill_frames_per_study": 1}, "distillation", "dataset.data: "),
    "stage 2 weight decay": ({"train#optimizer#weight_decay": 0.05}, "segmentation", "weight_decay: 0.01 -> 0.05"),
    "stage 1 weight decay": (
        {"distill#optimizer#params#0#weight_decay": 0.05},
        "distillation",
        "weight_decay: 0.01 -> 0.05",
    ),
    "val_interval": ({"val_interval": 2}, "segmentation", "interval: 1 -> 2"),
    "low-resolution epochs": (
        {"lowres_epochs": 1},
        "segmentation",
        'prepare_batch: "monai.engines.utils.default_prepare_batch" -> {"class"',
    ),
    "decoder_width": ({"decoder_width": 32}, "segmentation", "out_channels: 64 -> 32"),
    "balancing": ({"balancing": "fixed"}, "distillation", "balancer.class"),
    "standardize": ({"standardize": "zscore"}, "distillation", "standardizers.children.medsam: added"),
    "seed": ({"seed": 1}, "distillation", "seed: 0 -> 1"),
}


@pytest.mark.slow
@pytest.mark.parametrize("setting", sorted(CHANGES))
def test_a_changed_setting_makes_its_stage_refuse(finished, setting, monkeypatch):
    monkeypatch.chdir(ROOT)
    overrides, refusing, changed = CHANGES[setting]
    before = {p.name: file_sha256(p) for p in (finished / "models").iterdir()}
    distill, segment = _stages(finished, **overrides)
    stage = distill if refusing == "distillation" else segment
    with pytest.raises(RuntimeError, match="different configuration") as error:
        stage.run()
    assert changed in str(error.value) and f"stage {refusing!r} already finished" in str(error.value)
    if refusing == "segmentation":
        assert distill.run() is False  # stage 1 is unchanged: still skipped
    assert {p.name: file_sha256(p) for p in (finished / "models").iterdir()} == before  # nothing was touched


@pytest.mark.slow
def test_settings_that_change_nothing_keep_the_fingerprints(finished, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    distill, segment = _stages(finished)
    assert distill.run() is False and segment.run() is False  # as finished: both skip
    moved = Path(shutil.copytree(finished, tmp_path / "moved"))
    for overrides in ({}, {"num_workers": 1}):
        other = _stages(moved, **overrides)
        assert [s.fingerprint for s in other] == [distill.fingerprint, segment.fingerprint], overrides
    assert segment.description["after"] == {"distillation": distill.fingerprint}


STATS = {"_target_": "StatsHandler", "iteration_log": False, "tag_name": "extra"}  # MONAI's own, not ours


@pytest.mark.slow
def test_a_handler_appended_to_a_finished_stage_keeps_it_reused_and_resumable(finished, tmp_path, monkeypatch, caplog):
    """Handlers that only watch a run (here MONAI's StatsHandler, appended to every handler list of both stages) are
    not part of a stage's fingerprint: finished stages are still reused, and an interrupted one resumes."""
    monkeypatch.chdir(ROOT)
    appended = {"distill#handlers": STATS, "train#handlers": STATS, "validate#handlers": STATS}
    plain = _stages(finished)
    distill, segment = _stages(finished, appended)
    for stage in (distill, segment):  # attached: the trainer's epoch end reaches the appended StatsHandler
        attached = [getattr(h[0], "__self__", None) for h in stage.engine._event_handlers[Events.EPOCH_COMPLETED]]
        assert any(isinstance(h, StatsHandler) and h.tag_name == "extra" for h in attached), stage.name
    assert [s.fingerprint for s in (distill, segment)] == [s.fingerprint for s in plain]
    assert distill.run() is False and segment.run() is False  # reused, as without the extra handler
    # stage 2 stopped after its last epoch but before its record: it resumes from its checkpoint, and ends the same
    interrupted = Path(shutil.copytree(finished, tmp_path / "interrupted"))
    done = interrupted / "models/segmentation.done.json"
    record = json.loads(done.read_text())
    done.unlink()
    _, segment = _stages(interrupted, appended)
    with caplog.at_level(logging.INFO, logger="vfss_agglo_bundle"):
        assert segment.run() is True
    assert "resumed from" in caplog.text and "segmentation_resume.pt at epoch 1" in caplog.text
    assert json.loads(done.read_text())["fingerprint"] == record["fingerprint"]
    assert json.loads(done.read_text())["outputs"] == record["outputs"]


def test_describe_relativises_paths_and_refers_to_repeated_objects(tmp_path):
    net = torch.nn.Linear(2, 3)
    config = {
        "net": net,
        "again": net,
        "file": str(tmp_path / "data/frame.png"),
        "path": tmp_path / "models/model.pt",
        "device": torch.device("cpu"),
        "aug": RandGaussianNoised(keys="image", std=0.1),
    }
    description = describe(config, roots={"bundle_root": tmp_path})
    assert (
        description["file"] == "<bundle_root>/data/frame.png" and description["path"] == "<bundle_root>/models/model.pt"
    )
    assert description["again"] == {"same_as": "net"} and description["device"] == "<device>"
    assert description["net"]["in_features"] == 2 and description["net"]["parameters"]["weight"][0] == [3, 2]
    assert description["aug"]["rand_gaussian_noise"]["std"] == 0.1
    moved = {**config, "file": "/elsewhere/data/frame.png", "path": Path("/elsewhere/models/model.pt")}
    elsewhere = describe(moved, roots={"bundle_root": "/elsewhere"})
    assert fingerprint(elsewhere) == fingerprint(description)  # moved folders: the same fingerprint


def test_describe_ignores_parameter_values_and_random_states_but_not_buffers():
    torch.manual_seed(0)
    a = torch.nn.BatchNorm1d(4)
    torch.manual_seed(1)
    b = torch.nn.BatchNorm1d(4)
    b.weight.data.normal_()
    assert fingerprint(describe(a)) == fingerprint(describe(b))  # parameter values follow from the seed
    noise = RandGaussianNoised(keys="image", std=0.1)
    before = fingerprint(describe(noise))
    noise.set_random_state(seed=123)
    assert fingerprint(describe(noise)) == before
    b.running_mean += 1.0
    assert fingerprint(describe(a)) != fingerprint(describe(b))
    b.weight.requires_grad_(False)
    assert differences(describe(a), describe(b))[0].startswith("buffers.running_mean")


def test_differences_name_the_changed_settings():
    old = {"trainer": {"lr": 0.1, "groups": [{"wd": 0.01}, {"wd": 0.0}]}, "seed": 0}
    new = {"trainer": {"lr": 0.2, "groups": [{"wd": 0.01}, {"wd": 0.5}]}, "seed": 0, "extra": 1}
    assert differences(old, new) == ["extra: added", "trainer.groups.1.wd: 0.0 -> 0.5", "trainer.lr: 0.1 -> 0.2"]


@pytest.mark.slow
def test_stage_2_starts_from_the_distilled_encoder_and_the_shared_decoder(finished, monkeypatch):
    """Stage 2 loads student_encoder.pt into the segmenter just before it runs; a run from scratch does not, and
    both start from the same decoder weights (the network's own seeded stream, whatever ran before)."""
    monkeypatch.chdir(ROOT)
    distilled = torch.load(finished / "models/student_encoder.pt", weights_only=True)
    starts = {}
    for teachers in (["medsam"], []):
        _, segment = _stages(finished, teachers=teachers)
        torch.manual_seed(len(teachers))  # a different global state: must not matter
        segment.before()
        network = segment.engine.network
        starts[len(teachers)] = {k: v.clone() for k, v in network.state_dict().items()}
    encoder = {k.removeprefix("encoder."): v for k, v in starts[1].items() if k.startswith("encoder.")}
    assert encoder.keys() == distilled.keys() and all(torch.equal(encoder[k], distilled[k]) for k in distilled)
    scratch = {k.removeprefix("encoder."): v for k, v in starts[0].items() if k.startswith("encoder.")}
    assert any(not torch.equal(scratch[k], distilled[k]) for k in distilled if distilled[k].is_floating_point())
    decoder = [k for k in starts[1] if k.startswith("decoder.")]
    assert decoder and all(torch.equal(starts[0][k], starts[1][k]) for k in decoder)
