"""How a stage's MLflow run ends, and what a killed one leaves behind is cleared.

- `end`: the run ends with its status (FINISHED, FAILED, KILLED), and its logged models left
  PENDING (logging cut short by a signal or a retried call) are marked FAILED;
- `close_dead_runs`: RUNNING runs whose process is provably gone (`kill -9`; started in this boot
  and PID namespace, kd/track/lineage.py) are marked KILLED, their PENDING models FAILED; a run
  whose process still lives, or that another machine or container made, is never touched;
- `staging_dir`: MLflow's temporary files go to one folder per process under `.tmp/` in the
  store's root, and the folders of processes that are gone are removed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from kd.process import interrupt
from kd.process.identity import namespace_prefix, process_gone, process_id
from kd.track import store


def close_dead_runs(client, experiment_id: str) -> None:
    """Mark KILLED the RUNNING runs whose process is provably gone (kd/track/lineage.py: started in
    this boot and PID namespace, its PID now free or another process's), and FAILED their PENDING
    logged models; never a run of another machine, container or boot, whatever its `host` tag."""
    prefix = namespace_prefix()
    if prefix is None:
        return  # no /proc: no run's end can be proved here
    # The filter only keeps the search to this namespace's runs; process_gone decides.
    runs = client.search_runs([experiment_id], filter_string=(
        f"attributes.status = 'RUNNING' and tags.process LIKE '{prefix}%'"), max_results=1000)
    for run in runs:
        if not process_gone(run.data.tags.get("process", "")):
            continue
        client.set_terminated(run.info.run_id, "KILLED")
        _fail_pending_models(client, experiment_id, run.info.run_id)


def staging_dir() -> Path:
    """This process's folder for MLflow's temporary files, under `.tmp/` in the store's root;
    the folders of processes that are gone are removed first."""
    base = store.store_root() / ".tmp"
    base.mkdir(parents=True, exist_ok=True)
    for old in base.glob("mlflow-*"):  # `process_id`s hold no '_', so the name reads back
        if process_gone(old.name.removeprefix("mlflow-").replace("_", ":")):
            shutil.rmtree(old, ignore_errors=True)
    mine = base / f"mlflow-{process_id().replace(':', '_')}"
    mine.mkdir(exist_ok=True)
    return mine


def end(mlflow_module, experiment_id: str, run_id: str, status: str) -> None:
    """End the run with `status`, and mark FAILED its logged models left PENDING (a model whose
    logging was cut short, by a signal or a retried call). A store that stays away past the
    wait leaves the run RUNNING: when the stage failed for that already, its one line said so and
    this says nothing more (the next stage, finding this process gone, marks the run KILLED)."""
    client = mlflow_module.MlflowClient()
    wait = store.wait_seconds() if status == "FINISHED" else min(store.wait_seconds(), 10.0)
    try:
        with interrupt.deferred():  # a stop waits for the status to be recorded
            mlflow_module.end_run(status)  # leaves MLflow's active run first, then records it
        ended = True
    except Exception:  # noqa: BLE001 - recorded again below, patiently
        ended = False
    try:
        if not ended:
            store.patiently(lambda: client.set_terminated(run_id, status), wait=wait)
        store.patiently(lambda: _fail_pending_models(client, experiment_id, run_id), wait=wait)
    except store.TrackingError:
        if status == "FINISHED":
            raise


def _fail_pending_models(client, experiment_id: str, run_id: str) -> None:
    for model in client.search_logged_models([experiment_id],
                                             filter_string=f"source_run_id = '{run_id}'"):
        if str(model.status) == "PENDING":
            client.finalize_logged_model(model.model_id, "FAILED")
