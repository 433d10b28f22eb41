"""Per-epoch seeding, so every epoch's shuffling and augmentation depend only on (seed, epoch, rank)."""

from __future__ import annotations

import ignite.distributed as idist
from ignite.engine import Engine, Events
from monai.data.utils import set_rnd
from monai.utils import set_determinism
from vfss_agglo_bundle.utils.random import derived_seed


class EpochSeed:
    """At every ``EPOCH_STARTED`` seed Python, NumPy, torch and the dataset's random transforms with the stream
    ``derived_seed(seed, "epoch", epoch, rank)`` (:mod:`vfss_agglo_bundle.utils.random`).

    A run resumed from an epoch-end checkpoint then sees exactly the batches an uninterrupted run would have seen,
    whether or not the DataLoader uses worker processes. Streams of different seeds, epochs and ranks do not
    coincide (with ``seed + epoch``, seed 1 at epoch 1 would replay seed 0 at epoch 2); under
    ``torch.distributed`` every rank draws different augmentations.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    def epoch_seed(self, epoch: int, rank: int = 0) -> int:
        """The seed of ``epoch`` on ``rank``."""
        return derived_seed(self.seed, "epoch", int(epoch), int(rank))

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        seed = self.epoch_seed(engine.state.epoch, idist.get_rank())
        set_determinism(seed=seed)
        dataset = getattr(engine.data_loader, "dataset", None)
        if dataset is not None:
            set_rnd(dataset, seed)
