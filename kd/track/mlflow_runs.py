"""MLflow at the edge: the stages' runs and what they log (the only module that starts runs).

One MLflow run per executed stage, named after the stage, plus one *pipeline run* per pipeline
execution (made by the report stage, named after the DVC experiment) that holds the experiment's
headline. Every run is tagged `run_type` (`stage` or `pipeline`), `experiment`, `dvc.stage`,
`dataset`, `host`, `process` and `dvc.exp_name` / `dvc.baseline_rev` when DVC says what they are
(kd/track/lineage.py); no tag is ever empty. Where runs go: kd/track/store.py.

What a run shows is what the metrics files say: the per-epoch history is logged under `epoch/...`
with step = epoch, and the selected (best-validation) epoch's summary under the plain names of
`metrics/<stage>.json`, once, linked to the logged model. The runs table, compare view and model
page therefore show the summary; the charts show the history.

Runs and outputs stay consistent when a stage fails or is killed:
- a stage's files are written only after its run has logged everything, so a failure to log
  leaves the old files; the run of a stage that raised ends FAILED, of one stopped by a signal
  KILLED (kd/process/interrupt.py), and its logged models left PENDING are marked FAILED;
- each stage run first marks KILLED the RUNNING runs whose process is provably gone (`kill -9`;
  started in this boot and PID namespace, kd/track/lineage.py), and their PENDING logged models FAILED.
  A run whose process still lives (a queued experiment running beside this one), or that another
  machine or container made, is never touched;
- MLflow's staging folders go under `.tmp/` in the store's root, one per process, removed when
  its stage ends; the next stage removes those of killed processes: nothing is left in the
  system's temp folder;
- checkpoints do not hold run ids (that would make identical weights a new file for DVC): a
  training run is tagged `checkpoint.sha256`, and `kd.track.lookup.run_of(path)` finds the finished run that
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

from kd.process import files, interrupt, numerics, project, wait_policy
from kd.process.identity import process_id
from kd.track import model_registry, run_ends, store, store_access
from kd.track.lineage import run_tags
from kd.track.store import experiment_label, tracking_uri

HISTORY_PREFIX = "epoch/"


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

        With `register_tags`, the model also becomes a new version of model_registry.MODEL, tagged
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
            serialization_format="pickle", code_paths=[str(project.CODE_ROOT / "kd")],
            registered_model_name=model_registry.MODEL if register_tags is not None else None,
            # Pinned requirements: MLflow's own inference imports the model in a subprocess.
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
        self._model_id = info.model_id
        if register_tags is not None:
            model_registry.tag_and_promote(self._mlflow.MlflowClient(), info.registered_model_version,
                                     register_tags)

    def log_splits(self, folder: Path, dataset: str) -> None:
        """The stored splits this run trained, chose and was scored on, as MLflow dataset inputs
        (the runs table's Dataset column): `<dataset>/<split>`, digest = the first 32 hex digits
        of the file's SHA-256 (MLflow keeps 36 characters), the whole SHA-256 as a tag."""
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset

        for split, context in (("train", "training"), ("val", "validation"), ("test", "evaluation")):
            path = folder / f"{split}.pt"
            sha = files.file_sha256(path)
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
        store_access.probe()  # a store that is down is one line now, not a wait at the stage's end
        staging = run_ends.staging_dir()
    tempfile.tempdir = str(staging)
    try:
        exp_id = store.patiently(lambda: _experiment_id(mlflow, experiment_label()))
        store.patiently(lambda: run_ends.close_dead_runs(mlflow.MlflowClient(), exp_id))
        run = store.patiently(lambda: mlflow.start_run(experiment_id=exp_id,
                                                       run_name=run_name or stage, tags=all_tags))
        status = "FAILED"
        try:
            # what the run computed under goes with every stage's params (kd/process/numerics.py), and
            # how its threads waited (kd/process/wait_policy.py)
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
            run_ends.end(mlflow, exp_id, run.info.run_id, status)
    finally:
        tempfile.tempdir = None
        shutil.rmtree(staging, ignore_errors=True)
