"""A stage's share of the machine: its threads, and the memory it gives back.

Threads. torch starts one compute thread per core, and its threads wait for each other after
every op: two experiments side by side (`dvc queue start -j 2`) on 2 cores run 4 threads, and a
descheduled thread stalls its whole op, so each experiment slows down several times over. So
while a process trains or predicts (`computing()`, entered by kd.loop) it holds one slot (an
exclusive `flock` on a file) in `.tmp/cores/` under the store root, the parent repository even
inside a queued experiment's copy (see kd/tracking.py), counts the slots other processes hold
(a lock dies with its process), and runs cores // (them + itself) threads, counted when it
starts computing and kept for the stage (a count that changed mid-run would make its rounding
depend on when a neighbour started). `OMP_NUM_THREADS`, when set, is respected as is.

The thread count changes no result under portable numerics (kd/numerics.py: pinned dispatch,
MKL's strict mode, kd/fixed_order.py's fixed-order sums), so a stage may take
whatever share it gets. Under native numerics it does change the last bits.

Memory. glibc keeps freed blocks for reuse, and after the first large free it raises its
mmap threshold on its own, per arena; torch's worker threads each get an arena, so activations
freed batch after batch stay resident and a stage's memory grows with every batch it scores.
Fixing the thresholds (mallopt) stops that growth. The trim threshold is the memory an arena
keeps free at its top for the next batch: a training step frees and reallocates tens of MB of
activations every batch, and with glibc's 128 KiB each of them came back as fresh pages whose
page faults cost more than the step's arithmetic (the CNN teacher's step took 1.4x as long).
`benchmarks/throughput.py --stages` measures each stage's peak memory and time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from kd.store import store_root

MAX_SLOTS = 256
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20  # glibc's own upper bound for its dynamic threshold
TRIM_THRESHOLD = 64 << 20  # a training step's freed activations stay for the next step

_slot: int | None = None  # this process's open, locked slot file while it computes
_depth = 0  # nesting of computing() (kd.loop.fit calls predict inside)
_memory_set = False


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _slots_folder() -> Path:
    folder = store_root() / ".tmp" / "cores"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _claim(folder: Path) -> int:
    for i in range(MAX_SLOTS):
        fd = os.open(folder / f"slot-{i}", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            os.close(fd)
    raise RuntimeError(f"{folder}: all {MAX_SLOTS} slots are held")


def _held_by_others(folder: Path) -> int:
    mine = os.fstat(_slot).st_ino if _slot is not None else None
    held = 0
    for path in folder.glob("slot-*"):
        fd = os.open(path, os.O_RDWR)
        try:
            if os.fstat(fd).st_ino == mine:
                continue
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BlockingIOError:
            held += 1
        finally:
            os.close(fd)
    return held


def running_stages() -> int:
    """Processes computing on this store now, this one included."""
    return 1 + _held_by_others(_slots_folder())


def share_cores() -> int:
    """Set torch's thread count to this process's share of the cores; returns it."""
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    threads = max(1, cores() // running_stages())
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return threads


@contextmanager
def computing() -> Iterator[int]:
    """Hold this process's slot for the block and run its share of the cores, counted on entry
    (a nested block keeps the count); yields the thread count."""
    global _slot, _depth, _memory_set
    if not _memory_set:
        _give_back_freed_memory()
        _memory_set = True
    if _depth == 0:
        _slot = _claim(_slots_folder())
        share_cores()
    _depth += 1
    try:
        yield torch.get_num_threads()
    finally:
        _depth -= 1
        if _depth == 0:
            os.close(_slot)  # releases the lock
            _slot = None


def _give_back_freed_memory() -> None:
    path = ctypes.util.find_library("c")
    libc = ctypes.CDLL(path) if path else None
    if libc is None or not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return  # not glibc: its allocator has its own policy
    libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
