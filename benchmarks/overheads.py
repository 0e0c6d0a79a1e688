"""The pipeline's costs around training: start-up, data, MLflow, the stages and DVC itself.

Stages and DVC run as child processes, in temporary folders, never in the project's own tree:
the project's data/, model/ and MLflow store are left alone.
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from benchmarks.common import PYTHON, ROOT, Child, child_env, env_vars, progress, run_child

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


def startup_commands(quick: bool) -> dict[str, list[str]]:
    """Bare python, the heavy imports the stages pay for, and each stage's --help (its imports)."""
    imports = ["torch"] if quick else [
        "torch", "torchvision.datasets",  # kd.sources imports it at module level
        "mlflow", "mlflow.pytorch"]       # the training stages' log_model imports mlflow.pytorch
    cmds = {"python -c pass": [PYTHON, "-c", "pass"]}
    cmds.update({f"import {m}": [PYTHON, "-c", f"import {m}"] for m in imports})
    for stage in ("teacher",) if quick else STAGES:
        cmds[f"stages.{stage} --help"] = [PYTHON, "-m", f"stages.{stage}", "--help"]
    return cmds


def workspace_params(dataset: str, data_root: str | None, epochs: int, **top) -> dict:
    """The project's params.yaml for another dataset, with every stage's epochs set (0: kept)."""
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["dataset"] = dataset
    p["data"]["root"] = data_root if dataset == "fashion-mnist" else None
    for section in ("teacher", "student", "distill"):
        if epochs > 0:
            p[section]["epochs"] = epochs
    p.update(top)
    return p


@dataclass
class MlflowCosts:
    new_store: float  # seconds to open a stage's run on a new store (first use: import, tables)
    existing_store: float  # the same on a store that exists (every later stage)
    log_epoch: float  # median seconds of log_metrics of one epoch's dict
    import_pytorch_flavor: float  # seconds of `import mlflow.pytorch` (log_model needs it)
    log_model: float  # seconds of one StageRun.log_model, as every training stage does it


def mlflow_costs(epoch_row: dict, calls: int, model: torch.nn.Module, example: torch.Tensor
                 ) -> MlflowCosts:
    """Through kd.tracking as the stages use it, on a temporary SQLite store."""
    from kd import tracking

    def open_run(stack: ExitStack) -> tuple[object, float]:
        t0 = time.perf_counter()
        run = stack.enter_context(tracking.stage_run("bench", "bench", {"seed": 0}))
        return run, time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp, env_vars(
            MLFLOW_TRACKING_URI=f"sqlite:///{tmp}/mlflow.db", MLFLOW_DISABLE_TELEMETRY="true",
            KD_TRACKING="on"):
        with ExitStack() as stack:
            run, new_store = open_run(stack)
            times = []
            for step in range(1, calls + 1):
                t0 = time.perf_counter()
                run.log_epoch(epoch_row, step)
                times.append(time.perf_counter() - t0)
        with ExitStack() as stack:
            run, existing = open_run(stack)
            t0 = time.perf_counter()
            import mlflow.pytorch  # noqa: F401  (timed apart from log_model's own work)
            t1 = time.perf_counter()
            run.log_model(model, example, "bench")
            t2 = time.perf_counter()
    return MlflowCosts(new_store, existing, statistics.median(times), t1 - t0, t2 - t1)


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
            name = {"distill": "distilled"}.get(stage, stage)
            metrics = ws / "metrics" / f"{name}.json"
            train_s = json.loads(metrics.read_text())["train_seconds"] if metrics.is_file() else None
            results[stage] = (child, train_s)
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


def dvc_overheads(dataset: str, data_root: str | None, epochs: int) -> dict[str, float]:
    """In a temporary git copy of the project: a full `dvc repro`, a `dvc repro` with nothing to
    do, and `dvc exp run -S T=4` from a T=2 baseline, with the distill stage's training seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        copy_project(repo)
        params = workspace_params(dataset, data_root, epochs, T=2)
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        env = child_env()
        sh = lambda *cmd: run_child(list(cmd), repo, env)  # noqa: E731
        sh("git", "init", "-q", "-b", "main")
        sh("git", "add", "-A")
        sh("git", "commit", "-qm", "project")
        progress(f"dvc repro (full, {dataset})")
        full = sh("dvc", "repro").seconds
        sh("git", "add", "-A")
        sh("git", "commit", "-qm", "baseline")
        progress("dvc repro (nothing to do)")
        noop = sh("dvc", "repro").seconds
        progress("dvc exp run -S T=4")
        # --no-hydra: apply -S to this params.yaml, not recompose it from the project's conf/.
        exp = sh("dvc", "exp", "run", "--no-hydra", "-S", "T=4").seconds
        distill = distill_train_seconds(repo)
    return {"full": full, "noop": noop, "exp": exp, "distill_train": distill}


def distill_train_seconds(repo: Path) -> float:
    """The newest distill run's training time, from the MLflow store at the repo's root."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("knowledge-distillation")
    (run,) = client.search_runs([exp.experiment_id], "tags.`dvc.stage` = 'distill'",
                                order_by=["attributes.start_time DESC"], max_results=1)
    return run.data.metrics["train_seconds"]
