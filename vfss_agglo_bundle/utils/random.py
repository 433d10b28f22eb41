"""Random streams you can reason about: every stream is named by (seed, what it is for, ...).

``derived_seed(seed, "segmenter")`` and ``derived_seed(seed, "epoch", 3, rank)`` come from
``numpy.random.SeedSequence``, which mixes all the words with a hash: streams of different seeds or keys do not
coincide (seed 0 at epoch 4 is not seed 1 at epoch 3, as ``seed + epoch`` would be). ``seeded`` runs a block on
such a stream and leaves the caller's generator as it was, so what a block draws does not depend on what ran before.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import numpy as np
import torch

__all__ = ["derived_seed", "seeded"]


def _word(key: str | int) -> int:
    if isinstance(key, int):
        return key
    return int.from_bytes(hashlib.sha256(str(key).encode()).digest()[:4], "big")


def derived_seed(seed: int, *keys: str | int) -> int:
    """A 32-bit seed for the stream named ``(seed, *keys)`` (``seed`` itself when there are no keys)."""
    if not keys:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), *map(_word, keys)]).generate_state(1)[0])


@contextlib.contextmanager
def seeded(seed: int | None, *keys: str | int) -> Iterator[None]:
    """Run a block with torch's CPU generator on the stream ``(seed, *keys)``, restoring the caller's state after.

    ``seed=None`` runs the block on the caller's generator unchanged (library default initialisation).
    """
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derived_seed(seed, *keys))
        yield
