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

Both are bounded by construction, not by time: the threshold is pinned on every device, and
`HeapTrim` trims after a fixed amount of work (rows and bytes of windows), so the free pages
held between two trims come from the same number of rows whether the run is slow (one core)
or fast (a GPU). A timer ("at most every 5 s") trimmed less often per row the faster the run
went. Without the pin, on the CPU, one layer of MiniLM's width peaked at 1,400 MB at 5k rows
and 1,840 MB at 40k (1.31x; trimming each window unpinned: 1.22x); pinned and trimmed, 674 and
744 MB (1.10x).

The price is a page fault per fresh page of every large block: with the model on the CPU
that measured about 20-25% slower end to end (MiniLM, 1,500 real reviews, 2 cores: 27 against
36 rows/s, system time 24 s against 2.4 s). `BERTETL_MMAP_THRESHOLD=0` never pins (for speed,
with a peak that grows with the table); `BERTETL_MMAP_THRESHOLD=BYTES` pins another size.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import platform
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: `mallopt` parameter number of M_MMAP_THRESHOLD in glibc's malloc.h.
_M_MMAP_THRESHOLD = -3
#: Blocks of this size or more are mmapped: above Python's small objects, well below one
#: batch's activations (4096 tokens x 384 floats = 6 MiB). At 1 MiB the arenas kept growing
#: (one layer of MiniLM's width, 20k -> 100k rows: 212 -> 237 MB, 53 -> 69 MB of it free); at
#: 256 KiB 186 -> 193 MB (32 -> 36 MB free), for about the same page faults (+1%).
DEFAULT_MMAP_THRESHOLD = 1 << 18
ENV = "BERTETL_MMAP_THRESHOLD"
#: `HeapTrim` trims once this many rows have passed since its last trim (one default window)...
TRIM_EVERY_ROWS = 4096
#: ...or this many bytes of windows (long texts: fewer rows, more tokens each).
TRIM_EVERY_BYTES = 64 << 20

_applied: int | None = None


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
    """Pin glibc's mmap threshold for this process, once, whatever the device (`device_type`
    is kept for callers; the choice no longer depends on it): `BERTETL_MMAP_THRESHOLD` (bytes)
    sets another size, 0 never pins. Returns the threshold set, or None where nothing was
    changed."""
    global _applied
    if _applied is not None:
        return _applied
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


def release_free_heap() -> bool:
    """Hand the free pages inside malloc's arenas back to the kernel (`malloc_trim(0)`), where
    `pin_mmap_threshold` pinned the threshold. Returns whether it trimmed. `HeapTrim` decides
    when (after so much work); this trims whenever it is called.

    With the threshold pinned, blocks under it (Python's larger objects, tokenizer buffers,
    torch's smaller tensors) still come from the arenas of several threads, and the free space
    between live blocks grows slowly with the windows. `malloc_trim(0)` returns every whole
    free page of every arena (`MADV_DONTNEED`); it took about 14 ms with ~50 MB free.
    """
    if _applied is None:
        return False
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


@dataclass
class HeapTrim:
    """When to trim the heap: after every `every_rows` rows or `every_bytes` bytes of windows
    (whichever comes first) since the last trim, never by elapsed time, so the free pages the
    arenas gather between two trims come from a bounded amount of work at any speed.
    `Pipeline.infer` calls `after_window` for each window it finishes."""

    every_rows: int = TRIM_EVERY_ROWS
    every_bytes: int = TRIM_EVERY_BYTES
    #: Rows and bytes since the last trim.
    rows: int = 0
    nbytes: int = 0
    #: Trims done (where the threshold is pinned; `release_free_heap` is a no-op otherwise).
    trims: int = 0

    def after_window(self, rows: int, nbytes: int) -> bool:
        """Count a finished window; trim once enough work has passed. Returns whether it
        trimmed."""
        self.rows += rows
        self.nbytes += nbytes
        if self.rows < self.every_rows and self.nbytes < self.every_bytes:
            return False
        self.rows = self.nbytes = 0
        trimmed = release_free_heap()
        self.trims += trimmed
        return trimmed
