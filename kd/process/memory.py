"""The memory a stage gives back: glibc's allocator told to return freed activations.

glibc keeps freed blocks for reuse, and after the first large free it raises its mmap threshold on
its own, per arena; torch's worker threads each get an arena, so activations freed batch after
batch stay resident and a stage's memory grows with every batch it scores. Fixing the thresholds
(mallopt) stops that growth. The trim threshold is the memory an arena keeps free at its top for
the next batch: a training step frees and reallocates tens of MB of activations every batch, and
with glibc's 128 KiB each of them came back as fresh pages whose page faults cost more than the
step's arithmetic. `benchmarks/throughput.py --stages` measures each stage's peak memory and time.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20  # glibc's own upper bound for its dynamic threshold
TRIM_THRESHOLD = 64 << 20  # a training step's freed activations stay for the next step

_set = False


def give_back_freed_memory() -> None:
    """Fix glibc's thresholds, once per process; nothing on another C library."""
    global _set
    if _set:
        return
    _set = True
    path = ctypes.util.find_library("c")
    libc = ctypes.CDLL(path) if path else None
    if libc is None or not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return  # not glibc: its allocator has its own policy
    libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
