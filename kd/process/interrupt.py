"""Stopping a stage: Ctrl-C, SIGTERM or SIGHUP, or the end of the `dvc` process that started it.

A stop signal raises `Interrupted` in the stage's main thread. It is a BaseException, so library
code's `except Exception` does not swallow it; kd/track/mlflow_runs.py closes the stage's MLflow run
KILLED on its way out, and kd/process/cli.py prints one line, `interrupted: teacher (SIGINT)`, and exits
128 + the signal's number (130 for SIGINT, 143 for SIGTERM), as a shell reports a signal.

Why a watch on `dvc`: DVC ignores SIGINT while its stage runs (Ctrl-C reaches the stage, which is
in the terminal's foreground group), but nothing forwards a signal sent to `dvc` alone, and
`dvc queue kill -f` / `dvc queue stop --kill` end the experiment's `dvc` process, not its stage:
the stage trained on, orphaned, logging into a RUNNING run. The kernel's parent-death signal
would not do: DVC runs a stage through `$SHELL -c`, and dash (Debian's /bin/sh) stays between
them as the parent. So a thread polls, once a second, whether the `dvc` process that runs this
stage (its nearest ancestor running DVC) still exists, and when it has ended sends this process
SIGTERM.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from kd.process import identity

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
POLL_SECONDS = 1.0
_held = 0  # how many deferred() blocks the main thread is in (handlers run in the main thread)
_pending: int | None = None  # the stop signal a deferred() block holds back


def _restore_outputs() -> str:
    """Put the stage's outputs back (kd/process/restore_outputs.py); under torchrun rank 0 only.
    The note its one line must add: '' or what is still missing."""
    if os.environ.get("RANK", "0") != "0":
        return ""
    from kd.process import restore_outputs  # on the way out only

    return restore_outputs.restore_outputs().note()


# What must run before the process ends however it stops, even before kd/process/cli.py is
# imported (a stop, or too little memory, while torch loads); cli registers its own (at_exit).
_last_words: Callable[[], str] = _restore_outputs


class Interrupted(BaseException):
    """A stop signal arrived: the stage stops, its run ends KILLED."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signal_name = signal.Signals(signum).name
        self.exit_status = 128 + signum


def stage_name() -> str:
    """The stage this process runs: `teacher` for `python -m stages.teacher`."""
    return Path(sys.argv[0]).stem if sys.argv and sys.argv[0] not in ("", "-m", "-c") else "stage"


def message(e: Interrupted) -> str:
    return f"interrupted: {stage_name()} ({e.signal_name})"


def install() -> None:
    """In a stage's own process only (stages/__init__.py): a test that imports a stage keeps
    Python's KeyboardInterrupt."""
    for signum in SIGNALS:
        signal.signal(signum, _raise)
    sys.excepthook = _one_line_if_interrupted
    dvc = dvc_process()
    if dvc is not None:
        threading.Thread(target=_watch, args=(dvc,), daemon=True, name="kd-watch-dvc").start()


def _raise(signum: int, frame) -> None:
    # A second signal while the run is being closed ends the process at once, with the line.
    global _pending
    for s in SIGNALS:
        signal.signal(s, _exit_now)
    if _held:
        _pending = signum  # raised when the store call in progress returns
        return
    raise Interrupted(signum)


@contextmanager
def deferred() -> Iterator[None]:
    """A stop signal that arrives inside the block is raised as Interrupted when it ends (see the
    module's docstring); nests. Outside a stage's process no handler is installed: a no-op."""
    global _held, _pending
    _held += 1
    try:
        yield
    finally:
        _held -= 1
        if not _held and _pending is not None:
            signum, _pending = _pending, None
            raise Interrupted(signum)


def at_exit(last_words: Callable[[], str]) -> None:
    """Run `last_words` (shielded) before a stop signal ends the process at once; its answer ends
    the one line."""
    global _last_words
    _last_words = last_words


@contextmanager
def shielded() -> Iterator[None]:
    """Stop signals that arrive inside the block are ignored: what it does (putting a stage's
    outputs back) must not be cut short, and the process is on its way out already. Only where
    handlers are installed (a stage's own process); elsewhere a no-op."""
    if signal.getsignal(signal.SIGINT) not in (_raise, _exit_now, _ignore):
        yield
        return
    before = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, _ignore)
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def _ignore(signum: int, frame) -> None:
    pass


def _exit_now(signum: int, frame) -> None:
    """A second signal: stop waiting for whatever was closing (a store call that hangs), but put
    the stage's outputs back first: a copy cut short would lose them silently."""
    with shielded():
        note = _safely(_last_words)
        print(message(Interrupted(signum)) + note, file=sys.stderr, flush=True)
    os._exit(128 + signum)


def _safely(call: Callable[[], str]) -> str:
    try:
        return call()
    except Exception:  # noqa: BLE001 - the process is ending: the stop's line still goes out
        return ""


def _one_line_if_interrupted(kind, value, tb) -> None:
    """An interrupt outside kd/process/cli.py's handling (while the stage imports torch, say): the same
    one line and exit status, not a traceback. So is running out of memory there (torch's
    libraries need gigabytes of address space to load: `ulimit -v` below that)."""
    line, status = None, 1
    if isinstance(value, Interrupted):
        line, status = message(value), value.exit_status
    elif out_of_memory(value):
        line = f"error: {stage_name()}: out of memory ({_first_line(value)}){_address_limit()}"
    if line is None:
        sys.__excepthook__(kind, value, tb)
        return
    with shielded():
        note = _safely(_last_words)
    print(line + note, file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(status)


def out_of_memory(e: BaseException) -> bool:
    """MemoryError, or a shared library the loader could not map (ImportError or OSError)."""
    text = str(e)
    return isinstance(e, MemoryError) or (isinstance(e, ImportError | OSError) and any(
        w in text for w in ("failed to map segment", "Cannot allocate memory")))


def _first_line(e: BaseException) -> str:
    return next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)[:200]


def _address_limit() -> str:
    import resource

    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    if soft == resource.RLIM_INFINITY:
        return "; free memory or run it on a larger machine"
    return (f"; this process may use at most {soft // 1024:,} KiB of address space (`ulimit -v`), "
            "too little to load torch: raise it")


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def dvc_process() -> str | None:
    """The `dvc` process running this stage, as a kd.track.identity.process_id: the nearest ancestor
    whose command is `dvc` (or `python .../dvc`). None outside DVC (it sets DVC_STAGE for every
    stage command) or without /proc."""
    if not os.environ.get("DVC_STAGE"):
        return None
    pid = os.getppid()
    while pid and pid > 1:
        if any(Path(arg).name == "dvc" for arg in _cmdline(pid)[:2]):
            return identity.process_id(pid)
        pid = identity.parent_pid(pid)
    return None


def _watch(dvc: str) -> None:
    while not identity.process_gone(dvc):
        time.sleep(POLL_SECONDS)
    os.kill(os.getpid(), signal.SIGTERM)
