"""MLflow at the edge: the only module that imports mlflow.

One MLflow run per executed stage, named after the stage and tagged with `dvc.stage`,
`dvc.exp_name`, `dvc.baseline_rev` and `dataset`.

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
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_EXPERIMENT = "knowledge-distillation"


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


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    """{'teacher': {'lr': 0.1}} -> {'teacher.lr': 0.1}; lists become strings."""
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


class NullRun:
    """Stands in when tracking is off, so stage code never asks whether it is on."""

    run_id = ""

    def log_metrics(self, metrics: dict, step: int | None = None) -> None: ...
    def log_model(self, model: torch.nn.Module, example: torch.Tensor) -> None: ...
    def log_artifact(self, path: str | Path) -> None: ...
    def set_tags(self, tags: dict) -> None: ...


class StageRun:
    def __init__(self, mlflow_module, run_id: str):
        self._mlflow = mlflow_module
        self.run_id = run_id

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        numeric = {k: float(v) for k, v in metrics.items()
                   if isinstance(v, int | float) and not isinstance(v, bool) and k != "epoch"}
        self._mlflow.log_metrics(numeric, step=step)

    def log_model(self, model: torch.nn.Module, example: torch.Tensor) -> None:
        """Log the model (torch.export format, which needs a tensor input example) on the CPU."""
        import mlflow.pytorch

        cpu_model = copy.deepcopy(model).float().cpu().eval()
        mlflow.pytorch.log_model(
            cpu_model, name="model", input_example=example.float().cpu().numpy().astype(np.float32),
            # Pinned requirements: MLflow's own inference imports the model in a subprocess.
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])

    def log_artifact(self, path: str | Path) -> None:
        self._mlflow.log_artifact(str(path))

    def set_tags(self, tags: dict) -> None:
        self._mlflow.set_tags({k: str(v) for k, v in tags.items()})


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
def stage_run(stage: str, dataset: str, params: dict, tags: dict | None = None
              ) -> Iterator[StageRun | NullRun]:
    """Open the MLflow run of one stage; params are flattened, tags added to the standard ones."""
    if os.environ.get("KD_TRACKING", "").lower() == "off":
        yield NullRun()
        return
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no calls home from a stage
    import mlflow

    exp_id = _experiment_id(mlflow, os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT))
    std_tags = {
        "dvc.stage": stage,
        "dvc.exp_name": os.environ.get("DVC_EXP_NAME", ""),
        "dvc.baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV", ""),
        "dataset": dataset,
        **(tags or {}),
    }
    with mlflow.start_run(experiment_id=exp_id, run_name=stage, tags=std_tags) as run:
        mlflow.log_params({k: str(v) for k, v in flatten(params).items()})
        yield StageRun(mlflow, run.info.run_id)
