"""Per-epoch seeding, so every epoch's shuffling and augmentation depend only on (seed, epoch)."""

from __future__ import annotations

from ignite.engine import Engine, Events
from monai.data.utils import set_rnd
from monai.utils import set_determinism


class EpochSeed:
    """At every ``EPOCH_STARTED`` seed Python, NumPy, torch and the dataset's random transforms with ``seed + epoch``.

    A run resumed from an epoch-end checkpoint then sees exactly the batches an uninterrupted run would have seen,
    whether or not the DataLoader uses worker processes.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        seed = self.seed + engine.state.epoch
        set_determinism(seed=seed)
        dataset = getattr(engine.data_loader, "dataset", None)
        if dataset is not None:
            set_rnd(dataset, seed)
