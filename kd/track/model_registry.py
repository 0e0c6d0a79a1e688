"""The model registry: every execution's distilled student is a new version of
`distilled-student`, tagged with its settings and scores; the alias `ship-<dataset>` names the
version to ship, the one with the best validation accuracy on that dataset.

MLflow aliases (not the deprecated stages) name one version each; `models:/distilled-student@
ship-fashion-mnist` is what `mlflow models serve` and `mlflow.pyfunc.load_model` take. A new
version takes the alias only when its validation accuracy is strictly higher than the aliased
one's (the test split chooses nothing), so a rerun, a worse sweep point or a tie leaves it.
Queued experiments register side by side: on a SQLite store the read-compare-move runs under the
store's lock (kd/track/mlflow_runs.py); a tracking server gives no such lock, so two versions registered
in the same instant may both read the old holder, and the later write wins.
"""

from __future__ import annotations

from kd.track import store

MODEL = "distilled-student"


def tag_and_promote(client, version: str, tags: dict) -> None:
    """Tag a new version of MODEL (`tags` holds dataset and val_acc among the rest), then move its
    dataset's alias to it if it is better; under the store's lock, as queued experiments register
    side by side."""
    for k, v in tags.items():
        client.set_model_version_tag(MODEL, version, k, str(v))
    with store.lock(store.tracking_uri()):
        promote(client, MODEL, version, tags["dataset"], float(tags["val_acc"]))


def alias(dataset: str) -> str:
    return f"ship-{dataset}"


def promote(client, model: str, version: str, dataset: str, val_acc: float) -> bool:
    """Move `ship-<dataset>` to `version` when its val_acc beats the holder's; True if moved.
    Every version carries a `val_acc` tag (set before this is called)."""
    name = alias(dataset)
    holder = client.get_registered_model(model).aliases.get(name)  # {alias: version}
    if holder is not None and float(
            client.get_model_version(model, str(holder)).tags.get("val_acc", "-1")) >= val_acc:
        return False
    client.set_registered_model_alias(model, name, version)
    return True
