"""Keep the C heap from growing with the table while models run (glibc only).

A forward pass allocates activations of a new size for every batch shape (rows x longest
row x hidden, and 4x that in the feed-forward layer). glibc serves allocations over its mmap
threshold with `mmap` and returns them on `free`, but it raises that threshold to the size
of each such block freed (up to 32 MiB). After the first batches, the activations of a
real-sized model land in the main heap, where blocks of ever-changing sizes fragment it: the
free bytes it keeps resident grew with the number of batches (MiniLM, 2k rows 892 MB peak
RSS, 100k rows 1,511 MB). Pinning the threshold keeps large blocks in `mmap`, so they go back
to the kernel when freed and the heap holds only small objects.

The price is a page fault per fresh page of every large block: with the model on the CPU
that measured about 20% slower end to end (MiniLM, real reviews, 2 cores: 27 against 34
rows/s, system time 23 s against 5 s per 1,500 rows), so it is the default only where the
activations live on the GPU and the host's blocks are few. On the CPU it is a choice:
`BERTETL_MMAP_THRESHOLD=1048576` pins it (peak RSS flat: 20k rows 753 MB, 100k 824 MB with
a real-sized layer), `BERTETL_MMAP_THRESHOLD=0` never pins it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

log = logging.getLogger(__name__)

#: `mallopt` parameter number of M_MMAP_THRESHOLD in glibc's malloc.h.
_M_MMAP_THRESHOLD = -3
#: Blocks of this size or more are mmapped: well above Python's and Arrow's small objects,
#: well below one batch's activations (4096 tokens x 384 floats = 6 MiB).
DEFAULT_MMAP_THRESHOLD = 1 << 20
ENV = "BERTETL_MMAP_THRESHOLD"

_applied: int | None = None


def _libc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


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
