"""A stage's share of the machine: its threads, and the memory it gives back.

Threads. torch starts one compute thread per core, and its threads wait for each other after
every op: two experiments side by side (`dvc queue start -j 2`) on 2 cores run 4 threads, and a
descheduled thread stalls its whole op, so each experiment slows down several times over. So
every stage that computes holds one slot (an exclusive `flock` on a file) in `.tmp/cores/` under
the store root, the parent repository even inside a queued experiment's copy (see
kd/tracking.py), counts the slots held by live stages (a lock dies with its process), and runs
cores // stages threads. It recounts at every epoch, so a stage that started alone gives up
threads when a second one starts. `OMP_NUM_THREADS`, when set, is respected as is.

Memory. glibc keeps freed blocks for reuse, and after the first large free it raises its
mmap threshold to 32 MiB and its trim threshold to twice that, per arena; torch's worker
threads each get an arena, so activations freed batch after batch stay resident: the
soft_targets stage grew to 2 GiB on Fashion-MNIST. Fixing the thresholds (mallopt) stops the
growth (0.8 GiB) at no measurable cost in speed (benchmarks/throughput.py --stages).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
from pathlib import Path

import torch

from kd.tracking import store_root

MAX_SLOTS = 256
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20  # glibc's own upper bound for its dynamic threshold
TRIM_THRESHOLD = 128 << 10  # glibc's default: give back a heap's free top beyond 128 KiB

_slot: int | None = None  # this process's open, locked slot file


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
    held = 0
    for path in folder.glob("slot-*"):
        fd = os.open(path, os.O_RDWR)
        try:
            if os.fstat(fd).st_ino == os.fstat(_slot).st_ino:
                continue
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BlockingIOError:
            held += 1
        finally:
            os.close(fd)
    return held


def running_stages() -> int:
    """Stages computing on this store now, this one included (claims this one's slot)."""
    global _slot
    folder = _slots_folder()
    if _slot is None:
        _slot = _claim(folder)
        _give_back_freed_memory()
    return 1 + _held_by_others(folder)


def share_cores() -> int:
    """Set torch's thread count to this stage's share of the cores; returns it."""
    stages = running_stages()
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    threads = max(1, cores() // stages)
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return threads


def _give_back_freed_memory() -> None:
    path = ctypes.util.find_library("c")
    libc = ctypes.CDLL(path) if path else None
    if libc is None or not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return  # not glibc: its allocator has its own policy
    libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
