"""MLflow at the edge: the only module that imports mlflow.

One MLflow run per executed stage, named after the stage, plus one *pipeline run* per pipeline
execution (made by the report stage, named after the DVC experiment) that holds the experiment's
headline: T, alpha, seed, dataset, preset, architectures, the three test accuracies and the ids
of the stage runs whose models it reports. Every run is tagged `run_type` (`stage` or
`pipeline`), `experiment`, `dvc.stage`, `dataset`, and `dvc.exp_name` / `dvc.baseline_rev` when
DVC says what they are; no tag is ever empty.

What a run shows is what the metrics files say: the per-epoch history is logged under `epoch/...`
with step = epoch, and the selected (best-validation) epoch's summary under the plain names of
`metrics/<stage>.json`, once, linked to the logged model. The runs table, compare view and model
page therefore show the summary; the charts show the history.

Where runs go:
- `MLFLOW_TRACKING_URI` when set (a team's tracking server, or a test's temporary store);
- otherwise a SQLite database `mlflow.db` and an artifact folder `mlartifacts/` at the repository
  root. The root is `DVC_ROOT` (DVC sets it to the parent repository even inside a queued
  experiment's temporary copy, so every experiment lands in one store), else the folder holding
  this project; never the working directory.
- `KD_TRACKING=off` swaps in a no-op run (benchmarks measure the loop without logging).

Several stages or queued experiments may start at once: creating a SQLite database and the
experiment happens under an exclusive file lock beside it, so none races on a not-yet-created store.
"""

from __future__ import annotations

import copy
import fcntl
import functools
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_EXPERIMENT = "knowledge-distillation"
# Every execution's distilled student becomes a new version of this registered model.
REGISTERED_MODEL = "distilled-student"
HISTORY_PREFIX = "epoch/"


def store_root() -> Path:
    return Path(os.environ.get("DVC_ROOT") or PROJECT_ROOT).resolve()


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{store_root() / 'mlflow.db'}"


def artifact_location(uri: str) -> str | None:
    """Artifacts beside a SQLite store, as an absolute URI; a server chooses its own (None).

    A relative default would resolve against each process's working directory (a queued
    experiment's temporary copy), scattering the artifacts.
    """
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri.removeprefix("sqlite:///"))
    return (db.parent.resolve() / "mlartifacts").as_uri()


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


def _numeric(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool)}


class NullRun:
    """Stands in when tracking is off, so stage code never asks whether it is on."""

    run_id = ""

    def log_epoch(self, metrics: dict, epoch: int) -> None: ...
    def log_summary(self, metrics: dict) -> None: ...
    def log_model(self, model: torch.nn.Module, example: torch.Tensor, name: str,
                  register_tags: dict | None = None) -> None: ...
    def log_artifact(self, path: str | Path) -> None: ...
    def set_tags(self, tags: dict) -> None: ...


class StageRun:
    def __init__(self, mlflow_module, run_id: str):
        self._mlflow = mlflow_module
        self.run_id = run_id
        self._model_id: str | None = None

    def log_epoch(self, metrics: dict, epoch: int) -> None:
        """One epoch of the history, under `epoch/<key>` at step = epoch (never step 0)."""
        row = {f"{HISTORY_PREFIX}{k}": v for k, v in _numeric(metrics).items() if k != "epoch"}
        self._mlflow.log_metrics(row, step=epoch)

    def log_summary(self, metrics: dict) -> None:
        """The stage's result under the metrics file's names, linked to the logged model if any."""
        self._mlflow.log_metrics(_numeric(metrics), model_id=self._model_id)

    def log_model(self, model: torch.nn.Module, example: torch.Tensor, name: str,
                  register_tags: dict | None = None) -> None:
        """Log `model` (torch.export format, which needs a tensor input example) on the CPU.

        With `register_tags`, the model also becomes a new version of REGISTERED_MODEL, tagged
        with them. Log it before `log_summary`, so the summary shows on the model's page.
        """
        import mlflow.pytorch

        info = mlflow.pytorch.log_model(
            copy.deepcopy(model).float().cpu().eval(), name=name, input_example=example.cpu().numpy(),
            registered_model_name=REGISTERED_MODEL if register_tags is not None else None,
            # Pinned requirements: MLflow's own inference imports the model in a subprocess.
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
        self._model_id = info.model_id
        if register_tags is not None:
            client = self._mlflow.MlflowClient()
            for k, v in register_tags.items():
                client.set_model_version_tag(REGISTERED_MODEL, info.registered_model_version, k,
                                             str(v))

    def log_artifact(self, path: str | Path) -> None:
        self._mlflow.log_artifact(str(path))

    def set_tags(self, tags: dict) -> None:
        self._mlflow.set_tags({k: str(v) for k, v in tags.items() if v not in (None, "")})


@contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Exclusive lock beside a SQLite store while it and the experiment are created."""
    if not uri.startswith("sqlite:///"):
        yield  # a tracking server serialises its own writes
        return
    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.parent / f".{db.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _experiment_id(mlflow_module, name: str) -> str:
    uri = tracking_uri()
    with _store_lock(uri):
        mlflow_module.set_tracking_uri(uri)
        exp = mlflow_module.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        return mlflow_module.create_experiment(name, artifact_location=artifact_location(uri))


@contextmanager
def stage_run(stage: str, dataset: str, params: dict, tags: dict | None = None,
              run_name: str | None = None, run_type: str = "stage"
              ) -> Iterator[StageRun | NullRun]:
    """Open one MLflow run: named `run_name` (default: the stage), with flat `params`.

    Lists and tuples in params are logged as their Python text (`[3]`, `()`), None as `none`.
    """
    if os.environ.get("KD_TRACKING", "").lower() == "off":
        yield NullRun()
        return
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no calls home from a stage
    import mlflow

    exp_id = _experiment_id(mlflow, os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT))
    all_tags = {k: str(v) for k, v in {**run_tags(stage, dataset, run_type), **(tags or {})}.items()
                if v not in (None, "")}
    with mlflow.start_run(experiment_id=exp_id, run_name=run_name or stage, tags=all_tags) as run:
        mlflow.log_params({k: "none" if v is None else str(list(v) if isinstance(v, tuple) else v)
                           for k, v in params.items()})
        yield StageRun(mlflow, run.info.run_id)
