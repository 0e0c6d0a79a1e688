"""The pipeline's costs around training: start-up, the logged model, the stages, DVC itself, and
several experiments at once.

Stages and DVC run as child processes, in temporary folders, never in the project's own tree:
the project's data/, model/ and MLflow store are left alone.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.common import PYTHON, ROOT, Child, child_env, composed_params, progress, run_child

STAGES = ("download", "teacher", "student", "soft_targets", "distill", "report")
# Results of an earlier run in the project: a temporary copy starts without them.
RUN_OUTPUTS = {"data", "model", "metrics", "plots", "report", "mlartifacts", "dvc.lock", "mlflow.db"}


def startup_seconds(commands: dict[str, list[str]], repeats: int) -> dict[str, float]:
    """Fastest wall time of each command as a fresh process (warm disk cache). The minimum, not
    the median: start-up is a fixed cost, and a neighbour's load only ever adds to it."""
    env = child_env()
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(repeats):
        for name, cmd in commands.items():  # in turns, like the training comparisons
            times[name].append(run_child(cmd, ROOT, env).seconds)
    return {name: min(t) for name, t in times.items()}


def workspace_params(dataset: str, data_root: str | None, epochs: int, **top) -> dict:
    """The default run's params (conf/) for another dataset, with every stage's epochs set (0:
    kept)."""
    p = composed_params()
    p["dataset"] = dataset
    p["data"]["root"] = data_root if dataset == "fashion-mnist" else None
    for section in ("teacher", "student", "distill"):
        if epochs > 0:
            p[section]["epochs"] = epochs
    p.update(top)
    return p


def run_stages(dataset: str, data_root: str | None, epochs: int
               ) -> dict[str, tuple[Child, float | None]]:
    """Each stage as `python -m stages.X` in DAG order, in a temporary folder, tracked in a
    temporary MLflow store: the child (wall time, its own peak RSS) and, for the training
    stages, the training seconds from its metrics file (wall - training = the stage's overhead)."""
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp)
        (ws / "params.yaml").write_text(yaml.safe_dump(workspace_params(dataset, data_root, epochs)))
        env = child_env(MLFLOW_TRACKING_URI=f"sqlite:///{ws / 'mlflow.db'}")
        for stage in STAGES:
            progress(f"stage {stage} on {dataset}")
            child = run_child([PYTHON, "-m", f"stages.{stage}"], ws, env)
            trains = stage in ("teacher", "student", "distill")
            results[stage] = (child, train_seconds(ws, stage) if trains else None)
    return results


def copy_project(dst: Path) -> None:
    """The project's working tree as git sees it (tracked and new files, not ignored ones), less
    the outputs of earlier runs: new modules and presets come along without a list to update."""
    listed = run_child(["git", "ls-files", "--cached", "--others", "--exclude-standard"], ROOT,
                       child_env()).output.splitlines()
    for rel in listed:
        src = ROOT / rel
        if Path(rel).parts[0] in RUN_OUTPUTS or not src.is_file():
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst / rel)


def git_copy(repo: Path, params: dict) -> None:
    """A git repository holding a copy of the project with these params, committed."""
    copy_project(repo)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"],
                ["git", "commit", "-qm", "project"]):
        run_child(cmd, repo, child_env())


def dvc_overheads(dataset: str, data_root: str | None, epochs: int) -> dict[str, float]:
    """In a temporary git copy of the project: a full `dvc repro`, a `dvc repro` with nothing to
    do, `dvc exp run -S T=4` from a T=2 baseline with the distill stage's training seconds, and
    then the three stages that experiment ran, each alone as a fresh process (DVC's own share is
    the experiment's time less theirs)."""
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        git_copy(repo, workspace_params(dataset, data_root, epochs, T=2))
        env = child_env()
        sh = lambda *cmd: run_child(list(cmd), repo, env)  # noqa: E731
        progress(f"dvc repro (full, {dataset})")
        out = {"full": sh("dvc", "repro").seconds}
        sh("git", "add", "-A")
        sh("git", "commit", "-qm", "baseline")
        progress("dvc repro (nothing to do)")
        out["noop"] = sh("dvc", "repro").seconds
        progress("dvc exp run -S T=4, then its stages alone")
        # --no-hydra: apply -S to this params.yaml, not recompose it from the project's conf/.
        out["exp"] = sh("dvc", "exp", "run", "--no-hydra", "-S", "T=4").seconds
        out["distill_train"] = train_seconds(repo, "distill")
        for stage in ("check", "distill", "report"):
            out[stage] = sh(PYTHON, "-m", f"stages.{stage}").seconds
        out["distill_train_alone"] = train_seconds(repo, "distill")
    return out


# Logs the teacher's servable model in a format (argv[2]) to a store (argv[1]), prints the
# seconds of log_model and the model's URI.
_LOG_MODEL = """import sys, time
import torch, mlflow, mlflow.pytorch
from kd.track import serving
from kd.train import nets
net = nets.build("cnn:32-64", (1, 28, 28), 10, 0.0, 0.3)
model = serving.Servable(net, torch.tensor([0.29]), torch.tensor([0.35])).eval()
mlflow.set_tracking_uri(sys.argv[1])
with mlflow.start_run():
    t0 = time.perf_counter()
    info = mlflow.pytorch.log_model(model, name="model", serialization_format=sys.argv[2],
        input_example=torch.zeros(2, 1, 28, 28, dtype=torch.uint8).numpy(),
        code_paths=[sys.argv[3]], pip_requirements=["torch"])
    print(time.perf_counter() - t0, info.model_uri)
"""
# Loads a logged model (argv[2]) in a fresh process, as a user or a server would; prints the
# seconds of the imports and of load_model; then one prediction.
_LOAD_MODEL = """import sys, time
t0 = time.perf_counter()
import mlflow, mlflow.pytorch, torch
t1 = time.perf_counter()
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pytorch.load_model(sys.argv[2])
t2 = time.perf_counter()
assert model(torch.zeros(3, 1, 28, 28, dtype=torch.uint8)).shape == (3, 10)
print(t1 - t0, t2 - t1)
"""


def logged_model_costs() -> dict[str, tuple[float, float, float]]:
    """{format: (seconds of log_model, of the imports and of load_model in a fresh process)} for
    the pickle format the stages log and torch.export's pt2, MLflow's default."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        env = child_env()
        create = f"import mlflow; mlflow.MlflowClient({uri!r}).search_experiments()"
        run_child([PYTHON, "-c", create], Path(tmp), env)  # the tables, outside the timings
        for fmt in ("pickle", "pt2"):
            progress(f"MLflow: log_model ({fmt}) and load_model in a fresh process")
            seconds, model_uri = run_child([PYTHON, "-c", _LOG_MODEL, uri, fmt, str(ROOT / "kd")],
                                           Path(tmp), env).output.split()[-2:]
            load = run_child([PYTHON, "-c", _LOAD_MODEL, uri, model_uri], Path(tmp), env)
            imports, loading = load.output.split()[-2:]
            out[fmt] = (float(seconds), float(imports), float(loading))
    return out


def queued_experiments(dataset: str, data_root: str | None, epochs: int,
                       settings: dict[str, tuple[int, dict]]) -> dict[str, float]:
    """Wall time of four queued experiments (new T values each) per setting {name: (jobs, extra
    environment)}, in one temporary git copy whose baseline ran first (one epoch per model, the
    distill stage `epochs`)."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        params = workspace_params(dataset, data_root, 1)
        params["distill"]["epochs"] = epochs
        git_copy(repo, params)
        progress("queue: the baseline (dvc repro, one epoch per model)")
        run_child(["dvc", "repro"], repo, child_env())
        run_child(["git", "add", "-A"], repo, child_env())
        run_child(["git", "commit", "-qm", "baseline"], repo, child_env())
        for i, (name, (jobs, extra)) in enumerate(settings.items()):
            env = child_env(**extra)
            temps = [str(10 * i + t) for t in (1, 2, 3, 5)]  # new values: nothing is cached
            for T in temps:
                run_child(["dvc", "exp", "run", "--queue", "--no-hydra", "-S", f"T={T}"], repo, env)
            progress(f"queue: 4 experiments, {name}")
            t0 = time.perf_counter()
            run_child(["dvc", "queue", "start", "-j", str(jobs)], repo, env)
            while True:
                status = run_child(["dvc", "queue", "status"], repo, env).output
                if "Running" not in status and "Queued" not in status:
                    break
                if "Worker status: 0 active" in status:
                    # The last setting's workers left when the queue ran dry, after `start` had
                    # counted them as alive: start them again.
                    run_child(["dvc", "queue", "start", "-j", str(jobs)], repo, env)
                time.sleep(1)
            out[name] = time.perf_counter() - t0
            if "Failed" in status:
                raise RuntimeError(f"a queued experiment failed:\n{status}")
    return out


def train_seconds(root: Path, stage: str) -> float:
    """The newest run of a training stage: its training seconds, from the MLflow store at root."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("knowledge-distillation")
    (run,) = client.search_runs([exp.experiment_id], f"tags.`dvc.stage` = '{stage}'",
                                order_by=["attributes.start_time DESC"], max_results=1)
    return run.data.metrics["train_seconds"]
