"""BestCheckpoint keeps the best model across a resume; it writes atomically and only on improvement."""

from types import SimpleNamespace

import torch
from vfss_agglo_bundle.handlers.checkpoint import BestCheckpoint


def _engine(score: float, epoch: int) -> SimpleNamespace:
    return SimpleNamespace(state=SimpleNamespace(metrics={"val_mean_dice": score}, epoch=epoch))


def test_best_checkpoint_saves_only_improvements_and_resumes_its_best(tmp_path):
    net = torch.nn.Linear(2, 1)
    saver = BestCheckpoint(tmp_path / "model.pt", net, "val_mean_dice")
    saver(_engine(0.5, 1))
    first = torch.load(tmp_path / "model.pt", weights_only=True)
    torch.nn.init.constant_(net.weight, 3.0)
    saver(_engine(0.4, 2))  # worse: the file keeps the epoch-1 weights
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["weight"], first["weight"])
    state = saver.state_dict()
    assert state == {"best": 0.5, "best_epoch": 1}

    resumed = BestCheckpoint(tmp_path / "model.pt", net, "val_mean_dice")  # a fresh process after an interruption
    resumed.load_state_dict(state)
    resumed(_engine(0.45, 3))  # still worse than the best before the interruption: not saved
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["weight"], first["weight"])
    resumed(_engine(0.6, 4))
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["weight"], net.weight.detach())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
