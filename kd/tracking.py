"""MLflow at the edge: the stages' runs and what they log (the only module that starts runs).

One MLflow run per executed stage, named after the stage, plus one *pipeline run* per pipeline
execution (made by the report stage, named after the DVC experiment) that holds the experiment's
headline. Every run is tagged `run_type` (`stage` or `pipeline`), `experiment`, `dvc.stage`,
`dataset`, `host`, `process` and `dvc.exp_name` / `dvc.baseline_rev` when DVC says what they are
(kd/lineage.py); no tag is ever empty. Where runs go: kd/store.py.

What a run shows is what the metrics files say: the per-epoch history is logged under `epoch/...`
with step = epoch, and the selected (best-validation) epoch's summary under the plain names of
`metrics/<stage>.json`, once, linked to the logged model. The runs table, compare view and model
page therefore show the summary; the charts show the history.

Runs and outputs stay consistent when a stage fails or is killed:
- a stage's files are written only after its run has logged everything, so a failure to log
  leaves the old files; the run of a stage that raised ends FAILED, of one stopped by a signal
  KILLED (kd/interrupt.py), and its logged models left PENDING are marked FAILED;
- each stage run first marks KILLED the RUNNING runs whose process is provably gone (`kill -9`;
  started in this boot and PID namespace, kd/lineage.py), and their PENDING logged models FAILED.
  A run whose process still lives (a queued experiment running beside this one), or that another
  machine or container made, is never touched;
- MLflow's staging folders go under `.tmp/` in the store's root, one per process, removed when
  its stage ends; the next stage removes those of killed processes: nothing is left in the
  system's temp folder;
- checkpoints do not hold run ids (that would make identical weights a new file for DVC): a
  training run is tagged `checkpoint.sha256`, and `kd.runs.run_of(path)` finds the finished run that
  wrote a file with those bytes.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import socket
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch

from kd import interrupt, io, numerics, registry, store, wait_policy
from kd.lineage import namespace_prefix, process_gone, process_id, run_tags
from kd.store import PROJECT_ROOT, experiment_label, tracking_uri

HISTORY_PREFIX = "epoch/"


def _close_dead_runs(client, experiment_id: str) -> None:
    """Mark KILLED the RUNNING runs whose process is provably gone (kd/lineage.py: started in
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


def _staging_dir() -> Path:
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
    def log_file(self, name: str, data: bytes | str) -> None: ...
    def set_tags(self, tags: dict) -> None: ...
    def log_splits(self, folder: Path, dataset: str) -> None: ...


class StageRun:
    """The open run of a stage. Every call waits out a store that is briefly down or locked
    (store.patiently); epoch rows that cannot be logged are kept and sent with the next epoch's,
    so a store that goes away mid-training costs no training time until the stage's end."""

    def __init__(self, mlflow_module, run_id: str):
        self._mlflow = mlflow_module
        self.run_id = run_id
        self._model_id: str | None = None
        self._unsent: list[tuple[dict, int]] = []  # epoch rows the store has not taken yet
        self._down_since: float | None = None  # when the store began refusing them

    def log_epoch(self, metrics: dict, epoch: int) -> None:
        """One epoch of the history, under `epoch/<key>` at step = epoch (never step 0). A store
        that refuses it is tried again at the next epoch; one that has refused every try for
        store.wait_seconds() stops the stage (TrackingError)."""
        row = {f"{HISTORY_PREFIX}{k}": v for k, v in _numeric(metrics).items() if k != "epoch"}
        self._unsent.append((row, epoch))
        tried = time.monotonic()
        try:
            self._send_epochs()
            self._down_since = None
        except store.TrackingError as e:
            if not e.transient:
                raise  # read-only, full: waiting will not help
            self._down_since = self._down_since or tried
            down = time.monotonic() - self._down_since
            if down > store.wait_seconds():
                raise store.TrackingError(f"{e} (down for {down:.0f} s, {len(self._unsent)} "
                                          f"epochs unsent)", transient=True) from None

    def _send_epochs(self, wait: float = 0.0) -> None:
        while self._unsent:
            row, epoch = self._unsent[0]
            store.patiently(partial(self._mlflow.log_metrics, row, step=epoch), wait=wait)
            self._unsent.pop(0)

    def flush(self) -> None:
        """Send the epoch rows still kept, waiting for the store at most store.wait_seconds()."""
        self._send_epochs(wait=store.wait_seconds())

    def log_summary(self, metrics: dict) -> None:
        """The stage's result under the metrics file's names, linked to the logged model if any."""
        self.flush()
        store.patiently(lambda: self._mlflow.log_metrics(_numeric(metrics), model_id=self._model_id))

    def log_model(self, model: torch.nn.Module, example: torch.Tensor, name: str,
                  register_tags: dict | None = None) -> None:
        """Log `model` on the CPU, pickled with this project's `kd` package beside it.

        Pickle, not torch.export's pt2: pt2 has to trace the model to log it and load torch's
        export machinery to load it, several times slower both ways (docs/performance.md).
        MLflow adds `code/` (the copy of `kd`) to sys.path when it loads, so the model needs
        nothing from this checkout.

        With `register_tags`, the model also becomes a new version of registry.MODEL, tagged
        with them. Log it before `log_summary`, so the summary shows on the model's page.
        """
        store.patiently(lambda: self._log_model(model, example, name, register_tags))

    def _log_model(self, model, example, name, register_tags) -> None:
        import mlflow.pytorch

        # uv's environments hold no pip, so MLflow warns on every model that the conda.yaml it
        # writes lists pip unpinned, and says at INFO that it found uv's lock file: harmless,
        # and a stage's stderr is for errors.
        logging.getLogger("mlflow.utils.environment").setLevel(logging.ERROR)
        logging.getLogger("mlflow.utils.uv_utils").setLevel(logging.WARNING)
        # It also warns, on every pickled model, that unpickling runs code: true of any pickle,
        # and said once in the README; the stage's own checkpoints are read weights_only.
        logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)

        info = mlflow.pytorch.log_model(
            copy.deepcopy(model).float().cpu().eval(), name=name, input_example=example.cpu().numpy(),
            serialization_format="pickle", code_paths=[str(PROJECT_ROOT / "kd")],
            registered_model_name=registry.MODEL if register_tags is not None else None,
            # Pinned requirements: MLflow's own inference imports the model in a subprocess.
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
        self._model_id = info.model_id
        if register_tags is not None:
            registry.tag_and_promote(self._mlflow.MlflowClient(), info.registered_model_version,
                                     register_tags)

    def log_splits(self, folder: Path, dataset: str) -> None:
        """The stored splits this run trained, chose and was scored on, as MLflow dataset inputs
        (the runs table's Dataset column): `<dataset>/<split>`, digest = the first 32 hex digits
        of the file's SHA-256 (MLflow keeps 36 characters), the whole SHA-256 as a tag."""
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        for split, context in (("train", "training"), ("val", "validation"), ("test", "evaluation")):
            path = folder / f"{split}.pt"
            sha = io.file_sha256(path)
            with warnings.catch_warnings():  # MLflow registers its local-file source twice and
                warnings.simplefilter("ignore", UserWarning)  # warns that it cannot choose
                source = resolve_dataset_source(str(path.resolve()))
            data = MetaDataset(source, name=f"{dataset}/{split}", digest=sha[:32])
            store.patiently(partial(self._mlflow.log_input, data, context=context,
                                    tags={"sha256": sha}))

    def log_file(self, name: str, data: bytes | str) -> None:
        """An artifact named `name` with these contents (the stage's files are not written yet)."""
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / name
            path.write_bytes(data.encode() if isinstance(data, str) else data)
            store.patiently(lambda: self._mlflow.log_artifact(str(path)))

    def set_tags(self, tags: dict) -> None:
        store.patiently(lambda: self._mlflow.set_tags(
            {k: str(v) for k, v in tags.items() if v not in (None, "")}))


def _experiment_id(mlflow_module, name: str) -> str:
    uri = tracking_uri()
    with store.lock(uri):
        mlflow_module.set_tracking_uri(uri)
        exp = mlflow_module.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        return mlflow_module.create_experiment(name, artifact_location=store.artifact_location(uri))


@contextmanager
def stage_run(stage: str, dataset: str, params: dict, tags: dict | None = None,
              run_name: str | None = None, run_type: str = "stage"
              ) -> Iterator[StageRun | NullRun]:
    """Open one MLflow run: named `run_name` (default: the stage), with flat `params`.

    Lists and tuples in params are logged as their Python text (`[3]`, `()`), None as `none`.
    """
    if not store.enabled():
        yield NullRun()
        return
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no calls home from a stage
    for key, value in store.HTTP_ENV.items():  # store.patiently is the one bound on waiting
        os.environ.setdefault(key, value)
    import mlflow

    all_tags = {k: str(v) for k, v in {**run_tags(stage, dataset, run_type), **(tags or {}),
                                       "host": socket.gethostname(), "process": process_id()
                                       }.items() if v not in (None, "")}
    # MLflow stages models in the temp folder: keep that inside the project (see above).
    with store.errors():
        store.probe()  # a store that is down is one line now, not a wait at the stage's end
        staging = _staging_dir()
    tempfile.tempdir = str(staging)
    try:
        exp_id = store.patiently(lambda: _experiment_id(mlflow, experiment_label()))
        store.patiently(lambda: _close_dead_runs(mlflow.MlflowClient(), exp_id))
        run = store.patiently(lambda: mlflow.start_run(experiment_id=exp_id,
                                                       run_name=run_name or stage, tags=all_tags))
        status = "FAILED"
        try:
            # what the run computed under goes with every stage's params (kd/numerics.py), and
            # how its threads waited (kd/wait_policy.py)
            store.patiently(lambda: mlflow.log_params(
                {k: "none" if v is None else str(list(v) if isinstance(v, tuple) else v)
                 for k, v in {**params, **numerics.settings(), **wait_policy.settings()}.items()}))
            stage = StageRun(mlflow, run.info.run_id)
            yield stage
            stage.flush()
            status = "FINISHED"
        except interrupt.Interrupted:
            status = "KILLED"
            raise
        finally:
            _end(mlflow, exp_id, run.info.run_id, status)
    finally:
        tempfile.tempdir = None
        shutil.rmtree(staging, ignore_errors=True)


def _end(mlflow_module, experiment_id: str, run_id: str, status: str) -> None:
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
