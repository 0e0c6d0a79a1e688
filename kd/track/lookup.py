"""Finding runs in the MLflow store: the run that wrote a checkpoint (None when tracking is off)."""

from __future__ import annotations

from pathlib import Path

from kd.process import files
from kd.track import store
from kd.track.store import experiment_label, tracking_uri

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
            filter_string=(f"tags.`{CHECKPOINT_TAG}` = '{files.file_sha256(checkpoint)}' "
                           "and attributes.status = 'FINISHED'"))
    return runs[0].info.run_id if runs else None
