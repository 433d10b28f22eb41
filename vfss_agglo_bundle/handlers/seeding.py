"""Per-epoch seeding, so every epoch's shuffling and augmentation depend only on (seed, epoch, rank)."""

from __future__ import annotations

import ignite.distributed as idist
from ignite.engine import Engine, Events
from monai.data.utils import set_rnd
from monai.utils import set_determinism


class EpochSeed:
    """At every ``EPOCH_STARTED`` seed Python, NumPy, torch and the dataset's random transforms with
    ``seed + epoch + RANK_STRIDE * rank``.

    A run resumed from an epoch-end checkpoint then sees exactly the batches an uninterrupted run would have seen,
    whether or not the DataLoader uses worker processes. Under ``torch.distributed`` every rank draws different
    augmentations (rank 0, and a run without DDP, use ``seed + epoch``).
    """

    RANK_STRIDE = 100_003

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        seed = self.seed + engine.state.epoch + self.RANK_STRIDE * idist.get_rank()
        set_determinism(seed=seed)
        dataset = getattr(engine.data_loader, "dataset", None)
        if dataset is not None:
            set_rnd(dataset, seed)
