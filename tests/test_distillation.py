"""Stage 1: the DistillationTrainer learns every teacher from the feature store, every balancing mode keeps sane
weights, an interrupted run resumes exactly, online teachers give the store's targets, and the `training` config
runs stage 1, skips it when done and refuses another configuration.

Data: a 64x64 phantom (4 studies x 4 frames, 8 training frames) with 2 stored views per frame, tiny random teachers
(medsam, rad_dino, medclip) and the efficientvit_b0 student; batch 2, so one epoch is 8 iterations.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from ignite.engine import Events
from monai.bundle import ConfigWorkflow
from monai.data import DataLoader, Dataset
from monai.handlers import LrScheduleHandler
from monai.inferers import SimpleInferer
from monai.optimizers import WarmupCosineSchedule
from monai.transforms import Compose, RandAdjustContrastd, RandGaussianNoised
from torch import nn
from vfss_agglo_bundle.data.datalist import load_datalist
from vfss_agglo_bundle.data.tasks import DEFAULT_TASKS
from vfss_agglo_bundle.data.transforms import ApplyViewd, LoadTeacherFeaturesd, LoadVFSSFramed
from vfss_agglo_bundle.data.views import view_items
from vfss_agglo_bundle.engines import DistillationTrainer, distill_logs
from vfss_agglo_bundle.handlers import EpochSeed, ResumeCheckpoint
from vfss_agglo_bundle.losses import DistillationLoss, build_balancer
from vfss_agglo_bundle.networks.adaptors import DistillationModel
from vfss_agglo_bundle.networks.student import StudentEncoder
from vfss_agglo_bundle.phantom.dataset import synthesize_dataset
from vfss_agglo_bundle.teachers.prepare import head_shapes, view_strength
from vfss_agglo_bundle.teachers.registry import build_teachers
from vfss_agglo_bundle.teachers.store import fill_store
from vfss_agglo_bundle.utils.io import file_sha256

SIZE = 64
TEACHERS = ["medsam", "rad_dino", "medclip"]
VIEWS = 2
BATCH = 2
EPOCH = 8  # iterations per epoch: 8 frames x 2 views / batch 2
LR = 2.0e-3


@dataclass
class Store:
    readers: dict
    items: list  # one per (frame, view)


@dataclass
class Run:
    trainer: DistillationTrainer
    model: DistillationModel
    balancer: nn.Module
    optimizer: torch.optim.Optimizer
    history: list  # distill_logs of every iteration: loss, loss_<teacher>, weight_<teacher>


class ScaledLoss(DistillationLoss):
    """The distillation loss with one teacher's loss multiplied by ``factor``."""

    def __init__(self, teacher: str, factor: float) -> None:
        super().__init__(TEACHERS)
        self.teacher, self.factor = teacher, factor

    def forward(self, outputs, targets):
        losses = super().forward(outputs, targets)
        losses[self.teacher] = losses[self.teacher] * self.factor
        return losses


class RecordingLoss(DistillationLoss):
    """The distillation loss, keeping a copy of the targets of the first call."""

    def __init__(self) -> None:
        super().__init__(TEACHERS)
        self.targets = None

    def forward(self, outputs, targets):
        if self.targets is None:
            self.targets = {k: (None if s is None else s.clone(), d.clone()) for k, (s, d) in targets.items()}
        return super().forward(outputs, targets)


@pytest.fixture(scope="module")
def teachers():
    return build_teachers(TEACHERS, None, "tiny")


@pytest.fixture(scope="module")
def store(tmp_path_factory, teachers) -> Store:
    root = tmp_path_factory.mktemp("distill")
    datalist = synthesize_dataset(root / "data", studies=4, frames=4, test_frames=None, image_size=SIZE)
    frames = load_datalist(datalist, "training", DEFAULT_TASKS)
    loader = LoadVFSSFramed(keys=("image",), image_size=SIZE)
    readers = fill_store(
        teachers, frames, root / "cache", lambda item: loader(item)["image"], views=VIEWS, progress=False
    )
    items = view_items(frames, VIEWS)
    assert len(items) == EPOCH * BATCH
    return Store(readers, items)


def make_run(
    store: Store,
    balancing: str = "attention",
    max_epochs: int = 1,
    init_seed: int = 0,
    loss: DistillationLoss | None = None,
    online: dict | None = None,
    augment: bool = False,
    shuffle: bool = True,
    **kwargs,
) -> Run:
    """A DistillationTrainer over the stored views, built as configs/train.yaml builds it (``init_seed`` seeds the
    student, heads and balancer)."""
    transforms = [
        LoadVFSSFramed(keys=["image"], image_size=SIZE),
        ApplyViewd(keys=["image"], view_strength=view_strength(store.readers)),
        LoadTeacherFeaturesd(store.readers),
    ]
    if augment:
        transforms += [
            RandGaussianNoised(keys="image", prob=0.5, std=0.05),
            RandAdjustContrastd(keys="image", prob=0.5),
        ]
    loader = DataLoader(Dataset(store.items, Compose(transforms)), batch_size=BATCH, shuffle=shuffle, drop_last=True)
    student = StudentEncoder("efficientvit_b0", init_seed=init_seed)
    model = DistillationModel(student, head_shapes(store.readers), init_seed=init_seed)
    balancer = build_balancer(balancing, TEACHERS, feature_dim=student.summary_dim, init_seed=init_seed)
    optimizer = torch.optim.AdamW(
        [
            {"params": model.parameters(), "weight_decay": 0.01},
            {"params": balancer.parameters(), "lr": 10 * LR, "weight_decay": 0.0},
        ],
        lr=LR,
    )
    trainer = DistillationTrainer(
        device="cpu",
        max_epochs=max_epochs,
        train_data_loader=loader,
        network=model,
        optimizer=optimizer,
        loss_function=loss or DistillationLoss(TEACHERS),
        balancer=balancer,
        teacher_models=online,
        **kwargs,
    )
    history: list[dict[str, float]] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: history.append(distill_logs(e.state.output)))
    return Run(trainer, model, balancer, optimizer, history)


def mean(history: list[dict], key: str) -> float:
    return sum(h[key] for h in history) / len(history)


def weights(record: dict) -> list[float]:
    return [record[f"weight_{t}"] for t in TEACHERS]


def test_distillation_from_the_store_lowers_every_teachers_loss(store):
    run = make_run(store, "attention", max_epochs=3)
    run.trainer.run()
    history = run.history
    assert len(history) == 3 * EPOCH
    assert set(history[0]) == {"loss"} | {f"{p}_{t}" for p in ("loss", "weight", "weight_sd") for t in TEACHERS}
    for teacher in TEACHERS:
        first, last = mean(history[:4], f"loss_{teacher}"), mean(history[-4:], f"loss_{teacher}")
        assert last < 0.7 * first, f"{teacher}: loss {first:.4f} -> {last:.4f}"
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history)


@pytest.mark.parametrize("balancing", ["fixed", "uncertainty", "mlp", "attention"])
def test_balancing_keeps_weights_normalised_and_resists_a_100x_teacher(store, balancing):
    """medsam's loss is multiplied by 100: it must not take all the weight (nor be dropped by mlp/attention)."""
    run = make_run(store, balancing, max_epochs=2, loss=ScaledLoss("medsam", 100.0))
    run.trainer.run()
    history = run.history
    assert len(history) == 2 * EPOCH
    for record in history:
        w = weights(record)
        assert sum(w) == pytest.approx(1.0, abs=1e-5) and min(w) > 0.0, w
        assert record["weight_medsam"] < 0.5, w
    medsam = [r["weight_medsam"] for r in history]
    if balancing == "fixed":
        assert all(weights(r) == pytest.approx([1 / 3] * 3, abs=1e-6) for r in history)
    elif balancing == "uncertainty":  # its learned weight on a 100x loss falls (towards 100x less than the others)
        assert medsam[-1] < medsam[0] <= 1 / 3 + 1e-6
        assert medsam[-1] < min(history[-1]["weight_rad_dino"], history[-1]["weight_medclip"])
    else:  # scale-free: the floor is half the uniform share, and the scaled teacher is treated like the others
        assert min(medsam) >= 0.5 / 3 - 1e-6
        assert min(medsam) > 0.2
    for teacher in TEACHERS:  # every teacher still learns
        assert mean(history[-3:], f"loss_{teacher}") < mean(history[:3], f"loss_{teacher}"), teacher


def _train_with_resume(store: Store, path: Path, init_seed: int, stop_after_epoch: int | None = None) -> Run:
    """Two epochs (attention balancer, augmentation, LR schedule) with EpochSeed and a ResumeCheckpoint at ``path``."""
    run = make_run(store, "attention", max_epochs=2, init_seed=init_seed, augment=True)
    scheduler = WarmupCosineSchedule(run.optimizer, warmup_steps=EPOCH, t_total=2 * EPOCH)
    LrScheduleHandler(scheduler, epoch_level=False, print_lr=False).attach(run.trainer)
    EpochSeed(seed=7).attach(run.trainer)
    objects = {"model": run.model, "balancer": run.balancer, "optimizer": run.optimizer, "lr_scheduler": scheduler}
    ResumeCheckpoint(path, objects, fingerprint="test").attach(run.trainer)
    if stop_after_epoch is not None:
        run.trainer.add_event_handler(Events.EPOCH_COMPLETED(once=stop_after_epoch), lambda engine: engine.terminate())
    run.trainer.run()
    return run


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sb[key], sa[key]), key


def test_resume_after_an_interruption_matches_an_uninterrupted_run(store, tmp_path):
    full = _train_with_resume(store, tmp_path / "full.pt", init_seed=0)
    assert len(full.history) == 2 * EPOCH

    first = _train_with_resume(store, tmp_path / "cut.pt", init_seed=0, stop_after_epoch=1)
    assert first.trainer.state.epoch == 1 and len(first.history) == EPOCH
    assert (tmp_path / "cut.pt").is_file()
    torch.load(tmp_path / "cut.pt", map_location="cpu", weights_only=True)  # loadable as ResumeCheckpoint loads it

    # fresh objects, initialised differently, continue from the checkpoint
    resumed = _train_with_resume(store, tmp_path / "cut.pt", init_seed=1)
    assert resumed.trainer.state.epoch == 2 and resumed.trainer.state.iteration == 2 * EPOCH
    assert len(resumed.history) == EPOCH
    for step, (got, want) in enumerate(zip(resumed.history, full.history[EPOCH:], strict=True)):
        assert got == pytest.approx(want, abs=1e-6), f"iteration {EPOCH + step + 1}"
    _assert_same_state(full.model, resumed.model)
    _assert_same_state(full.balancer, resumed.balancer)


def test_online_teachers_give_the_stored_targets(store, teachers):
    """One step each, same batch (frame 0, views 0 and 1): targets agree to float16 storage precision."""
    stored, online = RecordingLoss(), RecordingLoss()
    from_store = make_run(store, loss=stored, shuffle=False, epoch_length=1)
    from_teachers = make_run(store, loss=online, online=teachers, shuffle=False, epoch_length=1)
    from_store.trainer.run()
    from_teachers.trainer.run()
    for name in TEACHERS:
        (s_summary, s_dense), (o_summary, o_dense) = stored.targets[name], online.targets[name]
        dense_dim, grid, _ = head_shapes(store.readers)[name]
        assert s_dense.shape == o_dense.shape == (BATCH, dense_dim, *grid)
        torch.testing.assert_close(o_dense, s_dense, rtol=1e-3, atol=1e-3)
        assert (s_summary is None) == (o_summary is None) == (name == "medsam")
        if s_summary is not None:
            torch.testing.assert_close(o_summary, s_summary, rtol=1e-3, atol=1e-3)
        loss_store, loss_online = from_store.history[0][f"loss_{name}"], from_teachers.history[0][f"loss_{name}"]
        assert loss_online == pytest.approx(loss_store, rel=1e-3)
    assert all(p.grad is None and not p.requires_grad for t in teachers.values() for p in t.parameters())


class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _stage1(bundle_root: Path, **overrides) -> tuple[bool, str, list[str]]:
    """Parse configs/train.yaml as `monai.bundle run training` does, then run only data, store and stage 1.

    Returns whether stage 1 ran, its fingerprint and the messages of the package's loggers.
    """
    settings = {
        "bundle_root": str(bundle_root),
        "phantom_studies": 3,
        "phantom_frames": 4,
        "phantom_test_frames": 4,
        "distill_frames_per_study": 100,  # every frame
        "image_size": SIZE,
        "teachers": TEACHERS,
        "teacher_preset": "tiny",
        "distill_epochs": 1,
        "distill_batch_size": 2,
        **overrides,
    }
    workflow = ConfigWorkflow(
        config_file="configs/train.yaml",
        workflow_type="train",
        run_id="training",
        meta_file="configs/metadata.json",
        logging_file="configs/logging.conf",
        **settings,
    )
    logs = _Messages()
    logger = logging.getLogger("vfss_agglo_bundle")
    logger.addHandler(logs)
    try:
        workflow.initialize()
        for key in ("prepare_data", "teacher_store"):
            workflow.parser.get_parsed_content(key)
        stage = workflow.parser.get_parsed_content("distill#stage")
        ran, fingerprint = stage.run(), stage.fingerprint
        workflow.finalize()
    finally:
        logger.removeHandler(logs)
    return ran, fingerprint, logs.messages


def test_training_config_runs_skips_and_refuses_stage1(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # train.yaml reads configs/common.yaml relative to the bundle root
    models = tmp_path / "models"
    ran, fingerprint, _ = _stage1(tmp_path)
    assert ran is True
    record = json.loads((models / "distillation.done.json").read_text())
    assert record["fingerprint"] == fingerprint
    assert record["outputs"] == {"student_encoder.pt": file_sha256(models / "student_encoder.pt")}
    StudentEncoder("efficientvit_b0").load_state_dict(torch.load(models / "student_encoder.pt", weights_only=True))
    torch.load(models / "distillation_resume.pt", weights_only=True)  # as ResumeCheckpoint reads it
    encoder_digest = file_sha256(models / "student_encoder.pt")

    ran, _, messages = _stage1(tmp_path)
    assert ran is False
    assert any("distillation" in m and "skipping" in m for m in messages), messages
    assert file_sha256(models / "student_encoder.pt") == encoder_digest

    with pytest.raises(RuntimeError) as error:
        _stage1(tmp_path, balancing="fixed")
    chain, cause = [], error.value
    while cause is not None:
        chain.append(str(cause))
        cause = cause.__cause__
    assert any("different configuration" in text for text in chain), chain
    assert file_sha256(models / "student_encoder.pt") == encoder_digest


def test_the_trainer_uses_its_prepare_batch_and_inferer(store):
    """A custom ``prepare_batch`` gives the image and a custom ``inferer`` runs the forward (neither is ignored)."""
    seen = {"prepare": 0, "inferer": [], "network_inputs": []}

    def prepare_batch(batchdata, device, non_blocking, **kwargs):
        seen["prepare"] += 1
        return batchdata["image"].to(device) * 0.0, None  # a black image: the network must get exactly this

    class CountingInferer(SimpleInferer):
        def __call__(self, inputs, network, *args, **kwargs):
            seen["inferer"].append(tuple(inputs.shape))
            return super().__call__(inputs, network, *args, **kwargs)

    run = make_run(store, "fixed", prepare_batch=prepare_batch, inferer=CountingInferer())
    run.model.register_forward_pre_hook(lambda module, args: seen["network_inputs"].append(args[0].abs().max()))
    run.trainer.run()
    assert seen["prepare"] == EPOCH and seen["inferer"] == [(BATCH, 1, SIZE, SIZE)] * EPOCH
    assert seen["network_inputs"] == [0.0] * EPOCH


@pytest.mark.parametrize("kind", ["phi_s", "zscore"])
def test_standardized_targets_are_what_the_loss_sees_and_their_stats_are_cached(store, kind):
    from vfss_agglo_bundle.losses.standardize import store_standardizers

    fitted = store_standardizers(store.readers, kind)
    assert set(fitted) == set(TEACHERS)
    reader = store.readers["rad_dino"]
    stats, record = reader.statistics_files(kind)
    assert stats.is_file() and json.loads(record.read_text())["signature"] == reader.signature
    again = store_standardizers(store.readers, kind)  # read back from the cache, not refitted
    for name in TEACHERS:
        assert all(torch.equal(a, b) for a, b in zip(fitted[name].state_dict().values(),
                                                     again[name].state_dict().values(), strict=True))  # fmt: skip
    # over the stored features, the standardised targets have zero mean and unit variance per channel
    dense = torch.stack([reader.read(key, view)["dense"] for key, view in reader.stored()])
    z = fitted["rad_dino"].standardize(dense).permute(1, 0, 2, 3).flatten(1)  # [channels, tokens]
    assert z.mean(1).abs().max() < 1e-3 and (z.var(1) - 1).abs().max() < 0.05  # PHI-S: 32 channels, Hadamard exists
    # the loss compares the head's prediction with the standardised target
    pred = torch.randn(2, *dense.shape[1:])
    target = dense[:2]
    plain = DistillationLoss(["rad_dino"], dense_loss="mse")({"rad_dino": (None, pred)}, {"rad_dino": (None, target)})
    scaled = DistillationLoss(["rad_dino"], dense_loss="mse", standardizers={"rad_dino": fitted["rad_dino"]})(
        {"rad_dino": (None, pred)}, {"rad_dino": (None, target)}
    )
    expected = ((pred - fitted["rad_dino"].standardize(target)) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(scaled["rad_dino"], expected)
    assert not torch.allclose(scaled["rad_dino"], plain["rad_dino"])
    # a cache fitted on another teacher signature is refused
    record.write_text(json.dumps({**json.loads(record.read_text()), "signature": "0" * 64}))
    with pytest.raises(ValueError, match="fitted on teacher signature"):
        store_standardizers(store.readers, kind)
    stats.unlink()
    record.unlink()


def test_two_runs_fitting_the_same_store_at_once_both_get_the_stored_statistics(store, monkeypatch):
    """Study runs share a store: when another run writes the statistics between this run's fit and save, this run
    uses the file that is there (same store, same statistics) instead of failing."""
    from vfss_agglo_bundle.losses import standardize

    for reader in store.readers.values():  # nothing cached yet: every teacher is fitted, in order
        for suffix in ("pt", "json"):
            (reader.directory / f"standardize-phi_s.{suffix}").unlink(missing_ok=True)
    winner, order = {}, iter(store.readers)
    fit = standardize.PHIStandardizer.fit

    def fit_then_race(self, batches):
        fitted = fit(self, batches)
        name = next(order)
        path, _ = store.readers[name].statistics_files("phi_s")
        other = standardize.PHIStandardizer(self.dim)
        other.load_state_dict({k: v + 1 for k, v in fitted.state_dict().items()})  # what the other run wrote
        other.save(path)
        winner[name] = other
        return fitted

    monkeypatch.setattr(standardize.PHIStandardizer, "fit", fit_then_race)
    fitted = standardize.store_standardizers(store.readers, "phi_s")
    assert set(winner) == set(store.readers)
    for name, other in winner.items():
        assert all(torch.equal(a, b) for a, b in zip(fitted[name].state_dict().values(),
                                                     other.state_dict().values(), strict=True))  # fmt: skip
    for reader in store.readers.values():
        for suffix in ("pt", "json"):
            (reader.directory / f"standardize-phi_s.{suffix}").unlink(missing_ok=True)
