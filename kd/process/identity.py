"""Which process is which, across PID reuse, containers and reboots.

A process is named by `process_id()`: `<boot id>:<PID namespace>:<PID>:<start time>`, so a PID
is only ever read in the boot and PID namespace (machine, container) it was given in, and a PID
reused by another process is never taken for the one that made a run. `process_gone` is how a
stage decides that a RUNNING run, or its MLflow staging folder, was left by a process that was
killed (kd/track/run_ends.py), and how it notices that the `dvc` that started it has ended
(kd/process/interrupt.py); kd/process/files.py judges its temporary files by their PID alone
(`pid_alive`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# The one reading of a `process_id`, every field known: a boot id is a UUID, the others are
# numbers (a PID short enough for os.kill).
_PROCESS = re.compile(r"([0-9a-f-]+):([0-9]+):([0-9]{1,9}):([0-9]+)", re.ASCII)


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _pid_namespace() -> str:
    """This process's PID namespace (the inode of /proc/self/ns/pid); "" without /proc, or when
    the /proc mounted here is another namespace's (its PIDs are not the ones this process sees)."""
    try:
        if os.readlink("/proc/self") != str(os.getpid()):
            return ""
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return ""


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat's fields after the process's name (field 3 onwards); None without it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()  # the name in (...) may hold spaces


def _start_time(pid: int) -> str | None:
    """A process's start time (clock ticks since boot): with the PID, it names one process."""
    fields = _stat(pid)
    return fields[19] if fields else None  # field 22


def parent_pid(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[1]) if fields else None  # field 4


def process_id(pid: int | None = None) -> str:
    """`<boot id>:<PID namespace>:<PID>:<start time>` of this process, or of `pid` (a PID as this
    process sees it); a field this system cannot tell (no /proc) is left empty."""
    pid = os.getpid() if pid is None else pid
    return f"{_boot_id()}:{_pid_namespace()}:{pid}:{_start_time(pid) or ''}"


def namespace_prefix() -> str | None:
    """`<boot id>:<PID namespace>:`, the start of every `process_id` that `process_gone` can judge
    here; None where it can judge none (no /proc)."""
    boot, namespace = _boot_id(), _pid_namespace()
    return f"{boot}:{namespace}:" if boot and namespace else None


def process_gone(process: str) -> bool:
    """Whether the process a `process_id` names has provably ended: it was started in this very
    boot and PID namespace, and its PID is now free or another process's.

    Anything else is not provable here and answers False: a process of another machine, container
    (another PID namespace) or boot, even one under the same host name, where the same PID names
    another process; an id in an older format, or not one at all; a system without /proc.

    The cost: a run killed (`kill -9`) on a machine that then rebooted, in a container that has
    since exited, or on a system without /proc (macOS) stays `RUNNING`; close it by hand with
    `python -c "import mlflow; mlflow.MlflowClient().set_terminated('<run id>', 'KILLED')"`,
    `MLFLOW_TRACKING_URI` pointing at the store.
    """
    parsed = _PROCESS.fullmatch(process)
    if parsed is None:
        return False
    boot, namespace, pid, started = parsed.groups()
    if (boot, namespace) != (_boot_id(), _pid_namespace()):
        return False
    now = _start_time(int(pid))
    if now is None:  # /proc hides others' processes where mounted hidepid=2; kill(0) does not
        return not pid_alive(int(pid))
    return now != started


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists (someone else's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True
