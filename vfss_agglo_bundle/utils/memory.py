"""Keep a long-running process's resident memory flat while it allocates and frees many large arrays.

glibc's malloc serves a large block by ``mmap`` only above a threshold that it raises to the size of each large block
freed (up to 32 MB): after a few frames, frame-sized arrays come from the heap, which is fast (freed blocks are
reused without the kernel) but fragments, and the pages of freed blocks between live ones are not given back. Over
10,000 frames of `inferring` at 1512 x 920 that grew the resident memory by 214 MB. Mapping every block from 1 MB up
instead (a fixed threshold) kept it flat but cost a third of the throughput: each block's pages then fault in again.
:func:`release_free_memory`, called every few batches, keeps the fast heap and gives its free pages back.
"""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["release_free_memory"]


def release_free_memory() -> bool:
    """Give the pages of free heap blocks back to the system (glibc ``malloc_trim(0)``, every arena); returns whether
    any were (False without glibc)."""
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError, TypeError):
        return False
    return bool(trim(0))
