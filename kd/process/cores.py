"""A stage's share of the cores.

torch starts one compute thread per core, and its threads wait for each other after
every op: two experiments side by side (`dvc queue start -j 2`) on 2 cores run 4 threads, and a
descheduled thread stalls its whole op, so each experiment slows down several times over. So
while a process trains or predicts (`computing()`, entered by kd.train.loop) it holds one slot (an
exclusive `flock` on a file) in `.tmp/cores/` under the project's root (kd/process/project.py:
the parent repository even inside a queued experiment's copy), counts the slots other processes hold
(a lock dies with its process), and runs cores // (them + itself) threads, counted when it
starts computing and kept for the stage (a count that changed mid-run would make its rounding
depend on when a neighbour started). `OMP_NUM_THREADS`, when set, is respected as is.

The thread count changes no result under portable numerics (kd/process/numerics.py: pinned dispatch,
MKL's strict mode, kd/train/fixed_order.py's fixed-order sums), so a stage may take
whatever share it gets. Under native numerics it does change the last bits.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from kd.process import memory, project

MAX_SLOTS = 256

_slot: int | None = None  # this process's open, locked slot file while it computes
_depth = 0  # nesting of computing() (kd.train.loop.fit calls predict inside)


def machine_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _slots_folder() -> Path:
    folder = project.root() / ".tmp" / "cores"
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
    threads = max(1, machine_cores() // running_stages())
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return threads


@contextmanager
def computing() -> Iterator[int]:
    """Hold this process's slot for the block and run its share of the cores, counted on entry
    (a nested block keeps the count); yields the thread count."""
    global _slot, _depth
    memory.give_back_freed_memory()
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

