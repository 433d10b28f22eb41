"""A NaN or diverging loss stops its stage before anything of the bad state is written: LossGuard by hand on an
engine, and a tiny `training` run whose segmentation loss turns NaN in its second epoch."""

from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Engine
from test_training_run import TINY, bundle
from vfss_agglo_bundle.handlers import LossGuard
from vfss_agglo_bundle.utils.state_dict import read_state_dict


def _engine(losses: list[float], guard: LossGuard) -> Engine:
    engine = Engine(lambda e, batch: {"loss": torch.tensor(losses[e.state.iteration - 1])})
    guard.attach(engine)
    return engine


def test_a_nan_loss_stops_at_its_iteration():
    engine = _engine([1.0, 0.9, math.nan, 0.8], LossGuard("segmentation", window=2))
    with pytest.raises(FloatingPointError, match=r"stage segmentation: the loss is nan at epoch 1, iteration 3"):
        engine.run([0] * 4, max_epochs=1)
    assert engine.state.iteration == 3


def test_divergence_needs_patience_iterations_above_factor_times_the_start():
    start = [1.0, 1.0]
    ok = start + [20.0, 20.0, 1.0, 20.0, 20.0, 1.0]  # above 10 x 1.0 twice at most: recovers each time
    _engine(ok, LossGuard("distillation", factor=10, patience=3, window=2)).run([0] * len(ok), max_epochs=1)
    bad = start + [20.0, 20.0, 20.0, 1.0]
    engine = _engine(bad, LossGuard("distillation", factor=10, patience=3, window=2))
    with pytest.raises(FloatingPointError, match=r"diverged: 20 at epoch 1, iteration 5, above 10 x .* \(1\)"):
        engine.run([0] * len(bad), max_epochs=1)
    _engine(bad, LossGuard("distillation", factor=None, window=2)).run([0] * len(bad), max_epochs=1)  # NaN only
    with pytest.raises(ValueError, match="divergence_factor must be > 1"):
        LossGuard("x", factor=0.5)


NAN_LOSS = '''
import torch
from vfss_agglo_bundle.losses import DiceBCELoss


class NaNAfter(DiceBCELoss):
    """The stage-2 loss, NaN from call `after` + 1 on."""

    def __init__(self, after, **kwargs):
        super().__init__(**kwargs)
        self.after, self.calls = after, 0

    def forward(self, pred, target):
        self.calls += 1
        loss = super().forward(pred, target)
        return loss * float("nan") if self.calls > self.after else loss
'''


def test_a_nan_in_epoch_two_keeps_epoch_one(tmp_path, monkeypatch):
    (tmp_path / "nan_loss.py").write_text(NAN_LOSS)
    overlay = tmp_path / "nan.yaml"
    overlay.write_text("train#loss:\n  _target_: nan_loss.NaNAfter\n  after: 5\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    root = tmp_path / "bundle"
    args = ["--bundle_root", str(root), *TINY, "--teachers", "[]", "--seg_epochs", "3"]
    configs = repr(["configs/train.yaml", str(overlay)])
    result = bundle("training", configs, *args, check=False)
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert "stage segmentation: the loss is nan at epoch 2, iteration 6" in log  # 3 iterations an epoch: call 6
    assert not (root / "models" / "segmentation.done.json").exists()
    resume = torch.load(root / "models" / "segmentation_resume.pt", weights_only=True)["objects"]
    assert resume["engine"]["iteration"] == resume["engine"]["epoch_length"] == 3  # the end of epoch 1
    model = read_state_dict(root / "models" / "model.pt")  # written by epoch 1's validation, never after
    assert all(torch.isfinite(v).all() for v in model.values() if v.is_floating_point())
    assert all(torch.equal(model[k], v) for k, v in resume["model"].items())
