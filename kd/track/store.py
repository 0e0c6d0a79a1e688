"""Where MLflow runs go, and the one-line error when the store refuses.

- `MLFLOW_TRACKING_URI` when set (a team's tracking server, or a test's temporary store);
- otherwise a SQLite database `mlflow.db` and an artifact folder `mlartifacts/` at the repository
  root (kd/process/project.py: the parent repository even inside a queued experiment's temporary
  copy, so every experiment lands in one store; never the working directory).
- `KD_TRACKING=off` turns tracking off (benchmarks measure the loop without logging), and so
  does every rank but rank 0 under torchrun.

Several stages or queued experiments may start at once: creating a SQLite database and the
experiment, and moving a registry alias, happen under an exclusive file lock beside the database.

A store that is down or locked (a server restarting, a neighbour holding SQLite's write lock) is
waited for, not fought: `patiently` retries a call with backoff for at most `wait_seconds()`
(`KD_STORE_WAIT`, default 60) and then gives up with one line. MLflow's own HTTP retries (7, with
backoff: about ten minutes of silence) and its 120 s request timeout are cut to none and 10 s, so
that this bound is the only one. Whether the store is there and usable: kd/track/store_access.py.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from kd.errors import PipelineError
from kd.process import distributed, interrupt, project

DEFAULT_EXPERIMENT = "knowledge-distillation"
CONNECT_SECONDS = 5  # the check stage's probe: an unreachable store is one line, quickly
# What MLflow's HTTP client does on its own, set before it is imported (kd/track/mlflow_runs.py).
HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


class TrackingError(PipelineError):
    """The MLflow store refused a call (read-only, unreachable, full): one line, not SQLAlchemy's.
    `transient`: the refusal may go away by itself (see `transient()`)."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


@contextmanager
def errors() -> Iterator[None]:
    """Turn whatever MLflow or its database raises into a TrackingError naming the store. A stop
    signal waits for the block's end (interrupt.deferred)."""
    try:
        with interrupt.deferred():
            yield
    except PipelineError:
        raise
    except Exception as e:  # MlflowException, SQLAlchemy's OperationalError, OSError, ...
        raise _refusal(e) from None


def _refusal(e: Exception, wait: float = 0.0) -> TrackingError:
    """The one line for a store's refusal, saying how long it was waited for if it was."""
    retried = transient(e)
    waited = f" (gave up after {wait:.0f} s)" if retried and wait else ""
    hint = _write_limits() if permanent(e) else ""
    return TrackingError(f"MLflow store {tracking_uri()}: {_reason(e)[:300]}{hint}{waited}", retried)


def _write_limits() -> str:
    """What SQLite's 'disk I/O error' does not say: a file-size limit on this process, or a store
    folder with no space left."""
    import resource
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY:
        return f" (this process may write files of at most {soft:,} bytes: `ulimit -f`)"
    db = sqlite_file(tracking_uri())
    try:
        if db is not None and shutil.disk_usage(db.parent).free < 1 << 20:
            return f" (no space left in {db.parent})"
    except OSError:
        pass
    return ""


def _reason(e: BaseException) -> str:
    """The database's own words where there are some (SQLAlchemy keeps them as `.orig`), else
    the first line of the message."""
    seen: BaseException | None = e
    while seen is not None:
        if getattr(seen, "orig", None) is not None:
            return f"{type(seen.orig).__name__}: {seen.orig}"
        seen = seen.__cause__ or seen.__context__
    return next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)


# Errors no wait cures: a full disk or quota, a file-size limit (`ulimit -f`: EFBIG), a read-only
# filesystem, and SQLite's words for them. MLflow wraps a database error in an MlflowException
# whose HTTP status is 500, which alone would read as a server's passing trouble.
PERMANENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}
PERMANENT_SQLITE = ("disk I/O error", "database or disk is full", "readonly database",
                    "unable to open database file", "database disk image is malformed")


def permanent(e: BaseException) -> bool:
    """Whether anything in the error's chain is a write error that waiting cannot cure."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in PERMANENT_ERRNOS:
            return True
        if isinstance(seen, sqlite3.Error) and any(w in str(seen) for w in PERMANENT_SQLITE):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def transient(e: BaseException) -> bool:
    """Whether a store error may go away by itself: a connection refused, reset or timed out, a
    server answering 5xx, SQLite's database locked or busy. Not: read-only, full, a file-size
    limit, bad URI (`permanent`)."""
    if permanent(e):
        return False
    seen: BaseException | None = e
    while seen is not None:
        text = f"{type(seen).__name__}: {seen}"
        if isinstance(seen, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
            return True
        if any(word in text for word in ("database is locked", "ConnectionError", "Connection refused",
                                        "ConnectTimeout", "ReadTimeout", "timed out",
                                        "Max retries exceeded", "RemoteDisconnected")):
            return True
        code = getattr(seen, "get_http_status_code", lambda: None)()
        if isinstance(code, int) and code >= 500:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def wait_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get("KD_STORE_WAIT", "60")))
    except ValueError:
        raise TrackingError(f"KD_STORE_WAIT must be a number of seconds "
                            f"(got {os.environ['KD_STORE_WAIT']!r})") from None


def patiently(call: Callable[[], object], wait: float | None = None):
    """call(), retried with backoff (0.5 s doubling, at most 8 s apart) while the store's error
    is transient, for at most `wait` seconds (default wait_seconds()); then one TrackingError.
    A stop signal waits for the call in progress to return (interrupt.deferred), not for the
    retries: the pauses between them stop at once."""
    wait = wait_seconds() if wait is None else wait
    deadline, delay = time.monotonic() + wait, 0.5
    while True:
        try:
            with interrupt.deferred():
                return call()
        except PipelineError:
            raise
        except Exception as e:
            refusal = _refusal(e, wait)
            if not refusal.transient or time.monotonic() + delay > deadline:
                raise refusal from None
        time.sleep(delay)
        delay = min(2 * delay, 8.0)


# MLflow logs a database error with its whole traceback before raising it; the stage reports it
# as one line (TrackingError) instead.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


def store_root() -> Path:
    return project.root()


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{store_root() / 'mlflow.db'}"


def artifact_location(uri: str) -> str | None:
    """Artifacts beside a SQLite store, as an absolute URI; a server chooses its own (None).

    A relative default would resolve against each process's working directory (a queued
    experiment's temporary copy), scattering the artifacts.
    """
    db = sqlite_file(uri)
    return None if db is None else (db.parent.resolve() / "mlartifacts").as_uri()


def sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///path` URI; None for any other store."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def experiment_label() -> str:
    """The MLflow experiment every run goes to."""
    return os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT)


def enabled() -> bool:
    """Whether this process talks to MLflow: not with KD_TRACKING=off, and under torchrun only
    rank 0 does (one run per stage)."""
    return os.environ.get("KD_TRACKING", "").lower() != "off" and distributed.is_main()


@contextmanager
def lock(uri: str) -> Iterator[None]:
    """Exclusive lock beside a SQLite store while it and the experiment are created."""
    db = sqlite_file(uri)
    if db is None:
        yield  # a tracking server serialises its own writes
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.parent / f".{db.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
