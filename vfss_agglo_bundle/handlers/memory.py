"""Resident memory of long runs: free heap pages given back to the system at a steady pace."""

from __future__ import annotations

from ignite.engine import Engine, Events
from vfss_agglo_bundle.utils.memory import release_free_memory

__all__ = ["ReleaseMemory"]


class ReleaseMemory:
    """Every ``every`` iterations, give the pages of freed heap blocks back to the system
    (:func:`~vfss_agglo_bundle.utils.memory.release_free_memory`), so that a long video's resident memory stays flat
    while its frame-sized arrays keep being served quickly from the heap.

    Args:
        every: iterations (batches) between releases.
    """

    def __init__(self, every: int = 8) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1 iteration, got {every}.")
        self.every = int(every)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.every), self)

    def __call__(self, engine: Engine) -> None:
        release_free_memory()
