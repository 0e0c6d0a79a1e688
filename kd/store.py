"""Where MLflow runs go, and the one-line error when the store refuses.

- `MLFLOW_TRACKING_URI` when set (a team's tracking server, or a test's temporary store);
- otherwise a SQLite database `mlflow.db` and an artifact folder `mlartifacts/` at the repository
  root. The root is `DVC_ROOT` (DVC sets it to the parent repository even inside a queued
  experiment's temporary copy, so every experiment lands in one store), else the folder holding
  this project; never the working directory. kd/resources.py keeps its core slots there too.
- `KD_TRACKING=off` turns tracking off (benchmarks measure the loop without logging), and so
  does every rank but rank 0 under torchrun.

Several stages or queued experiments may start at once: creating a SQLite database and the
experiment, and moving a registry alias, happen under an exclusive file lock beside the database.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kd import distributed
from kd.errors import PipelineError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_EXPERIMENT = "knowledge-distillation"


class TrackingError(PipelineError):
    """The MLflow store refused a call (read-only, unreachable, full): one line, not SQLAlchemy's."""


@contextmanager
def errors() -> Iterator[None]:
    """Turn whatever MLflow or its database raises into a TrackingError naming the store."""
    try:
        yield
    except PipelineError:
        raise
    except Exception as e:  # MlflowException, SQLAlchemy's OperationalError, OSError, ...
        raise TrackingError(f"MLflow store {tracking_uri()}: {_reason(e)[:300]}") from None


def _reason(e: BaseException) -> str:
    """The database's own words where there are some (SQLAlchemy keeps them as `.orig`), else
    the first line of the message."""
    seen: BaseException | None = e
    while seen is not None:
        if getattr(seen, "orig", None) is not None:
            return f"{type(seen.orig).__name__}: {seen.orig}"
        seen = seen.__cause__ or seen.__context__
    return next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)


# MLflow logs a database error with its whole traceback before raising it; the stage reports it
# as one line (TrackingError) instead.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


def store_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or PROJECT_ROOT).resolve()


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
