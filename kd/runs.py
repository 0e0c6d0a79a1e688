"""Finding runs in the MLflow store: the run that wrote a checkpoint, a run's metrics, a stage's
finished runs on a dataset. Each answers nothing (None, {} or []) when tracking is off."""

from __future__ import annotations

from pathlib import Path

from kd import io, store
from kd.store import experiment_label, tracking_uri

CHECKPOINT_TAG = "checkpoint.sha256"  # what a training run is tagged with: its checkpoint's SHA-256


def run_of(checkpoint: Path) -> str | None:
    """The id of the newest FINISHED run that wrote a file with `checkpoint`'s bytes; None when
    tracking is off or no run in this store did (e.g. a checkpoint pulled from a DVC remote)."""
    if not store.enabled():
        return None
    import mlflow

    with store.errors():
        mlflow.set_tracking_uri(tracking_uri())
        exp = mlflow.get_experiment_by_name(experiment_label())
        if exp is None:
            return None
        runs = mlflow.MlflowClient().search_runs(
            [exp.experiment_id], max_results=1, order_by=["attributes.start_time DESC"],
            filter_string=(f"tags.`{CHECKPOINT_TAG}` = '{io.file_sha256(checkpoint)}' "
                           "and attributes.status = 'FINISHED'"))
    return runs[0].info.run_id if runs else None


def run_metrics(run_id: str | None) -> dict[str, float]:
    """A run's latest metrics ({} when tracking is off or there is no run)."""
    if not (store.enabled() and run_id):
        return {}
    import mlflow

    with store.errors():
        mlflow.set_tracking_uri(tracking_uri())
        return dict(mlflow.MlflowClient().get_run(run_id).data.metrics)


def finished_runs(stage: str, dataset: str, limit: int = 1000) -> list:
    """The newest FINISHED runs of `stage` on `dataset` in this store (MLflow Run objects); []
    when tracking is off."""
    if not store.enabled():
        return []
    import mlflow

    with store.errors():
        mlflow.set_tracking_uri(tracking_uri())
        exp = mlflow.get_experiment_by_name(experiment_label())
        if exp is None:
            return []
        return mlflow.MlflowClient().search_runs(
            [exp.experiment_id], max_results=limit, order_by=["attributes.start_time DESC"],
            filter_string=(f"tags.`dvc.stage` = '{stage}' and tags.dataset = '{dataset}' "
                           "and attributes.status = 'FINISHED'"))
