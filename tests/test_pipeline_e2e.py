"""End to end through DVC, as a user runs it: `dvc repro`, `dvc exp run -S T=2`, and two queued
experiments run by `dvc queue start -j 2`, all landing in one MLflow store at the repo root.

Runs in a temporary git repository holding a copy of the project, on digits with tiny epochs.
"""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from tests.conftest import ROOT, tiny_params

PROJECT_FILES = ("kd", "stages", "dvc.yaml", "params.yaml", "presets.yaml", ".dvc/config",
                 ".dvcignore", ".gitignore", "pyproject.toml")


def sh(repo: Path, *cmd: str, timeout: int = 600) -> str:
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=timeout,
                          env=_env())
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def _env() -> dict:
    env = dict(os.environ)
    # The stages' `python` must be this interpreter (uv run puts .venv/bin first the same way).
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.pop("MLFLOW_TRACKING_URI", None)  # exercise the default store at DVC_ROOT
    env.pop("KD_TRACKING", None)
    env.update(DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true", GIT_AUTHOR_NAME="t",
               GIT_AUTHOR_EMAIL="t@example.com", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.com")
    return env


def runs(repo: Path) -> list:
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    exp = mlflow.get_experiment_by_name("knowledge-distillation")
    return mlflow.search_runs([exp.experiment_id], output_format="list")


def count(all_runs, stage: str) -> int:
    return sum(r.info.run_name == stage for r in all_runs)


def make_project_repo(repo: Path) -> None:
    """A git repository holding a copy of the project (every tracked file, plus the project's
    folders as they are now) on digits with one epoch per model."""
    tracked = sh(ROOT, "git", "ls-files").splitlines()
    for rel in sorted({*tracked, *PROJECT_FILES}):
        src, dst = ROOT / rel, repo / rel
        if not src.exists() or rel.startswith(("data/", "model/", "metrics/", "plots/", "report/",
                                               "results/", "dvc.lock")):
            continue  # deleted but not committed, or outputs of the real run
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"),
                            dirs_exist_ok=True)
        else:
            shutil.copy2(src, dst)
    params = tiny_params()
    for section in ("teacher", "student", "distill"):
        params[section]["epochs"] = 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(repo, "git", "init", "-q", "-b", "main")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "project")


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    make_project_repo(repo)
    return repo


def test_repro_then_T_change_then_queue(repo):
    # 1. The whole DAG, every stage recorded once.
    sh(repo, "dvc", "repro")
    for rel in ("model/teacher.pt", "model/student.pt", "model/soft_targets.pt",
                "model/distilled.pt", "metrics/distilled.json", "report/report.md",
                "report/accuracy.png", "dvc.lock"):
        assert (repo / rel).exists(), rel
    first = runs(repo)
    assert sorted(r.info.run_name for r in first) == sorted(
        ["download", "teacher", "student", "soft_targets", "distill", "report"])
    assert all(r.data.metrics for r in first)
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "baseline run")

    # 2. A new temperature reruns only distill and report; the teacher is untouched.
    teacher_bytes = (repo / "model/teacher.pt").read_bytes()
    teacher_mtime = (repo / "model/teacher.pt").stat().st_mtime_ns
    out = sh(repo, "dvc", "exp", "run", "-S", "T=2")
    assert "Running stage 'distill'" in out and "Running stage 'report'" in out
    for stage in ("download", "teacher", "student", "soft_targets"):
        assert f"Running stage '{stage}'" not in out
    assert (repo / "model/teacher.pt").read_bytes() == teacher_bytes
    assert (repo / "model/teacher.pt").stat().st_mtime_ns == teacher_mtime
    second = runs(repo)
    assert count(second, "teacher") == 1 and count(second, "distill") == 2
    newest = max((r for r in second if r.info.run_name == "distill"),
                 key=lambda r: r.info.start_time)
    assert newest.data.params["T"] == "2.0" and newest.data.tags["dvc.exp_name"]

    # 3. Two queued experiments, run two at a time, land in the same store.
    sh(repo, "dvc", "exp", "run", "--queue", "-S", "T=1")
    sh(repo, "dvc", "exp", "run", "--queue", "-S", "T=8")
    sh(repo, "dvc", "queue", "start", "-j", "2")
    deadline = time.time() + 600
    while time.time() < deadline:
        status = sh(repo, "dvc", "queue", "status")
        if "Running" not in status and "Queued" not in status:
            break
        time.sleep(3)
    assert "Failed" not in status, status
    third = runs(repo)
    temps = sorted(r.data.params["T"] for r in third if r.info.run_name == "distill")
    assert temps == ["1.0", "2.0", "4.0", "8.0"]
    assert count(third, "teacher") == 1  # queued runs restored the teacher from cache
    shown = sh(repo, "dvc", "exp", "show", "--json")
    assert '"T": 8' in shown or '"T": 8.0' in shown
