"""Which registered student to ship: the alias `ship-<dataset>` on the version of
`distilled-student` with the best validation accuracy on that dataset.

MLflow aliases (not the deprecated stages) name one version each; `models:/distilled-student@
ship-fashion-mnist` is what `mlflow models serve` and `mlflow.pyfunc.load_model` take. A new
version takes the alias only when its validation accuracy is strictly higher than the aliased
one's (the test split chooses nothing), so a rerun, a worse sweep point or a tie leaves it.
Queued experiments register side by side: on a SQLite store the read-compare-move runs under the
store's lock (kd/tracking.py); a tracking server gives no such lock, so two versions registered
in the same instant may both read the old holder, and the later write wins.
"""

from __future__ import annotations


def alias(dataset: str) -> str:
    return f"ship-{dataset}"


def promote(client, model: str, version: str, dataset: str, val_acc: float) -> bool:
    """Move `ship-<dataset>` to `version` when its val_acc beats the holder's; True if moved.
    Every version carries a `val_acc` tag (set before this is called)."""
    name = alias(dataset)
    try:
        held = client.get_model_version_by_alias(model, name)
    except Exception as e:  # MLflow raises a bare MlflowException for "no such alias"
        if "alias" not in str(e).lower() and "not found" not in str(e).lower():
            raise
        held = None
    if held is not None and float(held.tags.get("val_acc", "-1")) >= val_acc:
        return False
    client.set_registered_model_alias(model, name, version)
    return True
