"""Who made a run: the commit and DVC experiment it belongs to, and the process that ran it.

A process is named by `process_id()`: the machine's boot id, the PID and the process's start
time, so a PID reused after a reboot or by another process is never taken for the one that made
a run. `process_gone` is how a stage decides that a RUNNING run, or a temporary file, was left by
a process that was killed (kd/tracking.py, kd/io.py).
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path


@functools.cache  # HEAD does not move while a stage runs; asked for by every tag set
def _git_head() -> str | None:
    """The commit checked out in the working directory (a queued experiment's copy has its own)."""
    try:
        proc = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 and proc.stdout.strip() else None


def experiment_name() -> str:
    """The DVC experiment's name under `dvc exp run`; the commit (short) under `dvc repro`."""
    head = _git_head()
    return os.environ.get("DVC_EXP_NAME") or (head[:7] if head else "workspace")


def run_tags(stage: str, dataset: str, run_type: str = "stage") -> dict[str, str | None]:
    """The tags every run carries; None where DVC did not set one (stage_run leaves those out)."""
    return {"run_type": run_type, "experiment": experiment_name(), "dvc.stage": stage,
            "dataset": dataset, "dvc.exp_name": os.environ.get("DVC_EXP_NAME"),
            "dvc.baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV") or _git_head()}


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> str | None:
    """A process's start time (clock ticks since boot): with the PID, it names one process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the name in (...) may hold spaces


def process_id(pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    return f"{_boot_id()}:{pid}:{_start_time(pid) or ''}"


def process_gone(process: str) -> bool:
    """Whether the process a `process_id` names has ended (on this host)."""
    boot, pid, started = process.rsplit(":", 2)
    if not pid.isdigit():
        return False  # not ours to judge
    if not started:  # no /proc (not Linux): all we can tell is whether the PID exists
        return not pid_alive(int(pid))
    if boot != _boot_id():
        return True  # the machine rebooted since
    return _start_time(int(pid)) != started  # gone, or its PID now belongs to another process


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists (someone else's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True
