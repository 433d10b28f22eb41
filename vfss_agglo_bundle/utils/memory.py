"""Keep a long-running process's resident memory flat while it allocates and frees many large arrays.

glibc's malloc serves a large block by ``mmap`` (given back to the system when freed) only above a threshold that
it raises to the size of each large block freed (up to 32 MB): after a few frames, every frame-sized array
(1512 x 920 x 12 masks: 16.7 MB) comes from the heap instead, where freed blocks fragment and are rarely given back.
Over 10,000 frames of `inferring` that grew the resident memory by 214 MB. A fixed threshold keeps large arrays on
``mmap``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["MMAP_THRESHOLD", "return_large_blocks"]

logger = logging.getLogger(__name__)

MMAP_THRESHOLD = 1 << 20  # bytes: blocks from 1 MB up are mapped and given back to the system when freed
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)


def return_large_blocks(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's ``mmap`` threshold at ``threshold`` bytes (no-op without glibc); returns whether it was set."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    done = bool(mallopt(_M_MMAP_THRESHOLD, int(threshold)))
    logger.debug("malloc: blocks of %d bytes and more are mapped (%s)", threshold, "set" if done else "not set")
    return done
