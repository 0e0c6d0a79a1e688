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
- `KD_TRACKING=off` swaps in a no-op run (benchmarks measure the loop without logging), and so
  does every rank but rank 0 under torchrun.

Several stages or queued experiments may start at once: creating a SQLite database and the
experiment happens under an exclusive file lock beside it, so none races on a not-yet-created store.

Runs and outputs stay consistent when a stage fails or is killed:
- a stage's files are written only after its run has logged everything, so a failure to log
  leaves the old files; the run of a stage that raised ends FAILED;
- every run is tagged with the `host` and `process` (boot, PID and start time) that made it;
  each stage run first marks KILLED the RUNNING runs of this host whose process is gone
  (`kill -9`), and their PENDING logged models FAILED. A run whose process still lives (a queued
  experiment running beside this one) is never touched;
- MLflow's staging folders go under `.tmp/` in the store's root, one per process, removed when
  its stage ends; the next stage removes those of killed processes: nothing is left in the
  system's temp folder;
- checkpoints do not hold run ids (that would make identical weights a new file for DVC): a
  training run is tagged `checkpoint.sha256`, and `run_of(path)` finds the finished run that
  wrote a file with those bytes.
"""

from __future__ import annotations

import copy
import fcntl
import functools
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from kd import distributed, io, numerics, registry
from kd.errors import PipelineError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_EXPERIMENT = "knowledge-distillation"
# Every execution's distilled student becomes a new version of this registered model.
REGISTERED_MODEL = "distilled-student"
HISTORY_PREFIX = "epoch/"
CHECKPOINT_TAG = "checkpoint.sha256"


class TrackingError(PipelineError):
    """The MLflow store refused a call (read-only, unreachable, full): one line, not SQLAlchemy's."""


@contextmanager
def _store_errors() -> Iterator[None]:
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


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> str | None:
    """A process's start time (clock ticks since boot): with the PID, it names one process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the name in (...) may hold spaces


def process_id(pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    return f"{_boot_id()}:{pid}:{_start_time(pid) or ''}"


def process_gone(process: str) -> bool:
    """Whether the process a `process_id` names has ended (on this host)."""
    boot, pid, started = process.rsplit(":", 2)
    if not pid.isdigit():
        return False  # not ours to judge
    if not started:  # no /proc (not Linux): all we can tell is whether the PID exists
        return not io.pid_alive(int(pid))
    if boot != _boot_id():
        return True  # the machine rebooted since
    return _start_time(int(pid)) != started  # gone, or its PID now belongs to another process


def _close_dead_runs(client, experiment_id: str) -> None:
    """Mark KILLED the RUNNING runs of this host whose process is gone, and FAILED their
    PENDING logged models; never a run whose process lives."""
    host = socket.gethostname()
    runs = client.search_runs([experiment_id], filter_string=(
        f"attributes.status = 'RUNNING' and tags.host = '{host}'"), max_results=1000)
    for run in runs:
        process = run.data.tags.get("process", "")
        if process.count(":") < 2 or not process_gone(process):
            continue
        client.set_terminated(run.info.run_id, "KILLED")
        for model in client.search_logged_models(
                [experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"):
            if str(model.status) == "PENDING":
                client.finalize_logged_model(model.model_id, "FAILED")


def _staging_dir() -> Path:
    """This process's folder for MLflow's temporary files, under `.tmp/` in the store's root;
    the folders of processes that are gone are removed first."""
    base = store_root() / ".tmp"
    base.mkdir(parents=True, exist_ok=True)
    for old in base.glob("mlflow-*"):
        process = old.name.removeprefix("mlflow-").replace("_", ":")
        if process.count(":") == 2 and process_gone(process):
            shutil.rmtree(old, ignore_errors=True)
    mine = base / f"mlflow-{process_id().replace(':', '_')}"
    mine.mkdir(exist_ok=True)
    return mine


def _tracking() -> bool:
    """Whether this process talks to MLflow: not with KD_TRACKING=off, and under torchrun only
    rank 0 does (one run per stage)."""
    return os.environ.get("KD_TRACKING", "").lower() != "off" and distributed.is_main()


def run_of(checkpoint: Path) -> str | None:
    """The id of the newest FINISHED run that wrote a file with `checkpoint`'s bytes; None when
    tracking is off or no run in this store did (e.g. a checkpoint pulled from a DVC remote)."""
    if not _tracking():
        return None
    import mlflow

    with _store_errors():
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
    if not (_tracking() and run_id):
        return {}
    import mlflow

    with _store_errors():
        mlflow.set_tracking_uri(tracking_uri())
        return dict(mlflow.MlflowClient().get_run(run_id).data.metrics)


def finished_runs(stage: str, dataset: str, limit: int = 1000) -> list:
    """The newest FINISHED runs of `stage` on `dataset` in this store (MLflow Run objects); []
    when tracking is off."""
    if not _tracking():
        return []
    import mlflow

    with _store_errors():
        mlflow.set_tracking_uri(tracking_uri())
        exp = mlflow.get_experiment_by_name(experiment_label())
        if exp is None:
            return []
        return mlflow.MlflowClient().search_runs(
            [exp.experiment_id], max_results=limit, order_by=["attributes.start_time DESC"],
            filter_string=(f"tags.`dvc.stage` = '{stage}' and tags.dataset = '{dataset}' "
                           "and attributes.status = 'FINISHED'"))


def experiment_label() -> str:
    """The MLflow experiment every run goes to."""
    return os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT)


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
    def __init__(self, mlflow_module, run_id: str):
        self._mlflow = mlflow_module
        self.run_id = run_id
        self._model_id: str | None = None

    def log_epoch(self, metrics: dict, epoch: int) -> None:
        """One epoch of the history, under `epoch/<key>` at step = epoch (never step 0)."""
        row = {f"{HISTORY_PREFIX}{k}": v for k, v in _numeric(metrics).items() if k != "epoch"}
        with _store_errors():
            self._mlflow.log_metrics(row, step=epoch)

    def log_summary(self, metrics: dict) -> None:
        """The stage's result under the metrics file's names, linked to the logged model if any."""
        with _store_errors():
            self._mlflow.log_metrics(_numeric(metrics), model_id=self._model_id)

    def log_model(self, model: torch.nn.Module, example: torch.Tensor, name: str,
                  register_tags: dict | None = None) -> None:
        """Log `model` on the CPU, pickled with this project's `kd` package beside it.

        Pickle, not torch.export's pt2: logging takes about a quarter of the time and loading it
        back (`mlflow.pytorch.load_model`, or `mlflow models serve`) a quarter too, because pt2
        has to trace the model and load torch's export machinery. MLflow adds `code/` (the copy
        of `kd`) to sys.path when it loads, so the model needs nothing from this checkout.

        With `register_tags`, the model also becomes a new version of REGISTERED_MODEL, tagged
        with them. Log it before `log_summary`, so the summary shows on the model's page.
        """
        with _store_errors():
            self._log_model(model, example, name, register_tags)

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
            registered_model_name=REGISTERED_MODEL if register_tags is not None else None,
            # Pinned requirements: MLflow's own inference imports the model in a subprocess.
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
        self._model_id = info.model_id
        if register_tags is not None:
            client = self._mlflow.MlflowClient()
            version = info.registered_model_version
            for k, v in register_tags.items():
                client.set_model_version_tag(REGISTERED_MODEL, version, k, str(v))
            with _store_lock(tracking_uri()):  # queued experiments promote side by side
                registry.promote(client, REGISTERED_MODEL, version, register_tags["dataset"],
                                 float(register_tags["val_acc"]))

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
            with _store_errors():
                self._mlflow.log_input(data, context=context, tags={"sha256": sha})

    def log_file(self, name: str, data: bytes | str) -> None:
        """An artifact named `name` with these contents (the stage's files are not written yet)."""
        with _store_errors(), tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / name
            path.write_bytes(data.encode() if isinstance(data, str) else data)
            self._mlflow.log_artifact(str(path))

    def set_tags(self, tags: dict) -> None:
        with _store_errors():
            self._mlflow.set_tags({k: str(v) for k, v in tags.items() if v not in (None, "")})


@contextmanager
def _store_lock(uri: str) -> Iterator[None]:
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
    if not _tracking():
        yield NullRun()
        return
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no calls home from a stage
    import mlflow

    all_tags = {k: str(v) for k, v in {**run_tags(stage, dataset, run_type), **(tags or {}),
                                       "host": socket.gethostname(), "process": process_id()
                                       }.items() if v not in (None, "")}
    with _store_errors():
        # MLflow stages models in the temp folder: keep that inside the project (see above).
        staging = _staging_dir()
        tempfile.tempdir = str(staging)
        exp_id = _experiment_id(mlflow, experiment_label())
        _close_dead_runs(mlflow.MlflowClient(), exp_id)
        run = mlflow.start_run(experiment_id=exp_id, run_name=run_name or stage, tags=all_tags)
    try:
        with run:  # ends the run FINISHED, or FAILED when the stage raised
            with _store_errors():
                # what the run computed under goes with every stage's params (kd/numerics.py)
                mlflow.log_params({k: "none" if v is None else
                                   str(list(v) if isinstance(v, tuple) else v)
                                   for k, v in {**params, **numerics.settings()}.items()})
            yield StageRun(mlflow, run.info.run_id)
    finally:
        tempfile.tempdir = None
        shutil.rmtree(staging, ignore_errors=True)
