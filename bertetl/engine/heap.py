"""Keep the C heap from growing with the table while models run (glibc only).

A forward pass allocates activations of a new size for every batch shape (rows x longest
row x hidden, and 4x that in the feed-forward layer). glibc serves allocations over its mmap
threshold with `mmap` and returns them on `free`, but it raises that threshold to the size
of each such block freed (up to 32 MiB). After the first batches, the activations of a
real-sized model land in the main heap, where blocks of ever-changing sizes fragment it: the
free bytes it keeps resident grew with the number of batches (MiniLM, 2k rows 892 MB peak
RSS, 100k rows 1,511 MB). Pinning the threshold keeps large blocks in `mmap`, so they go back
to the kernel when freed and the heap holds only small objects.

Pinned, the threshold still leaves smaller blocks (a window's smaller tensors, tokenizer
buffers, Python's larger objects) to the arenas of several threads, where free gaps kept
growing: at 256 KiB the arenas grew 186 -> 193 MB from 20k to 100k rows (at 1 MiB, 212 -> 237
MB), and `release_free_heap` hands their free pages back (BENCHMARKS.md, "Memory").

The price is a page fault per fresh page of every large block: with the model on the CPU
that measured about 25% slower end to end (MiniLM, 1,500 real reviews, 2 cores: 27 against
36 rows/s, system time 24 s against 2.4 s), so it is the default only where the activations
live on the GPU and the host's blocks are few. On the CPU it is a choice:
`BERTETL_MMAP_THRESHOLD=262144` pins it, `BERTETL_MMAP_THRESHOLD=0` never pins it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import platform
import time

log = logging.getLogger(__name__)

#: `mallopt` parameter number of M_MMAP_THRESHOLD in glibc's malloc.h.
_M_MMAP_THRESHOLD = -3
#: Blocks of this size or more are mmapped: above Python's small objects, well below one
#: batch's activations (4096 tokens x 384 floats = 6 MiB). At 1 MiB the arenas kept growing
#: (one layer of MiniLM's width, 20k -> 100k rows: 212 -> 237 MB, 53 -> 69 MB of it free); at
#: 256 KiB 186 -> 193 MB (32 -> 36 MB free), for about the same page faults (+1%).
DEFAULT_MMAP_THRESHOLD = 1 << 18
ENV = "BERTETL_MMAP_THRESHOLD"

_applied: int | None = None
#: When `release_free_heap` last trimmed (time.monotonic()).
_last_trim: float | None = None
#: Seconds between two trims of the heap.
TRIM_INTERVAL_S = 5.0


@functools.cache
def _libc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    name = ctypes.util.find_library("c")
    if not name:
        return None
    libc = ctypes.CDLL(name)
    libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    return libc


def pin_mmap_threshold(device_type: str = "cuda") -> int | None:
    """Pin glibc's mmap threshold for this process, once: by default when the model runs on
    a GPU; `BERTETL_MMAP_THRESHOLD` (bytes) decides for any device, 0 never pins. Returns the
    threshold set, or None where nothing was changed."""
    global _applied
    if _applied is not None:
        return _applied
    if ENV not in os.environ and device_type != "cuda":
        return None
    try:
        threshold = int(os.environ.get(ENV, DEFAULT_MMAP_THRESHOLD))
    except ValueError:
        log.warning("%s=%r is not a number of bytes; leaving malloc alone", ENV, os.environ[ENV])
        return None
    libc = _libc() if threshold > 0 else None
    if libc is None or libc.mallopt(_M_MMAP_THRESHOLD, threshold) != 1:
        return None
    _applied = threshold
    return threshold


def release_free_heap(min_interval_s: float = TRIM_INTERVAL_S) -> bool:
    """Hand the free pages inside malloc's arenas back to the kernel (`malloc_trim(0)`), where
    `pin_mmap_threshold` pinned the threshold and `min_interval_s` has passed since the last
    trim in this process. `Pipeline.infer` calls it after each window. Returns whether it trimmed.

    With the threshold pinned, blocks under it (Python's larger objects, tokenizer buffers,
    torch's smaller tensors) still come from the arenas of several threads, and the free space
    between live blocks grows slowly with the windows. `malloc_trim(0)` returns every whole
    free page of every arena (`MADV_DONTNEED`); it took about 14 ms with ~50 MB free, so it
    runs at most every `min_interval_s` (a GPU's model thread must not wait on it per window).
    """
    global _last_trim
    if _applied is None:
        return False
    now = time.monotonic()
    if _last_trim is not None and now - _last_trim < min_interval_s:
        return False
    libc = _libc()
    if libc is None:
        return False
    _last_trim = now  # before the call, which releases the GIL: one trim per interval
    libc.malloc_trim(0)
    return True
