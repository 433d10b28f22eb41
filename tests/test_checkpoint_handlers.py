"""BestCheckpoint keeps the best model across a resume (atomic writes, only on improvement); epoch seeding streams."""

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


def test_epoch_streams_of_two_seeds_never_coincide():
    """seed + epoch made seed 1 at epoch e replay seed 0 at epoch e + 1; SeedSequence streams differ everywhere."""
    from vfss_agglo_bundle.handlers import EpochSeed

    streams = {(seed, epoch, rank): EpochSeed(seed).epoch_seed(epoch, rank)
               for seed in (0, 1) for epoch in range(1, 101) for rank in (0, 1)}  # fmt: skip
    assert len(set(streams.values())) == len(streams)
    assert EpochSeed(0).epoch_seed(5) == EpochSeed(0).epoch_seed(5)  # and the same stream every time


def test_seeded_blocks_do_not_depend_on_what_ran_before():
    from vfss_agglo_bundle.utils.random import seeded

    draws = []
    for before in (0, 1):
        torch.manual_seed(before)
        with seeded(3, "segmenter"):
            draws.append(torch.rand(4))
        after = torch.rand(1)
        torch.manual_seed(before)
        assert torch.equal(after, torch.rand(1))  # the caller's stream is as if the block had not run
    assert torch.equal(draws[0], draws[1])
    with seeded(3, "student"):
        assert not torch.equal(torch.rand(4), draws[0])  # another name, another stream
