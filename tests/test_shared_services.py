"""The pipeline against the services a team shares (README: Scaling out): a real `mlflow server`
(SQLite backend, artifacts proxied into a folder of its own) that every stage logs to, and a DVC
remote from which a second clone pulls everything and finds nothing to retrain.

One `dvc repro` on digits in a temporary git repository serves both tests (module fixtures).
"""

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import metrics_file
from tests.project_repo import env, make_project_repo, sh

pytestmark = pytest.mark.slow  # a server, DVC and the whole pipeline: about a minute or more

# The stages that open an MLflow run (`check` opens none); `report` opens the pipeline run,
# named after the commit under `dvc repro`.
STAGE_RUNS = ("download", "teacher", "student", "soft_targets", "distill")
MODELS = {"teacher": "teacher", "student": "student", "distill": "distilled"}
MODEL_FILES = ("teacher.pt", "student.pt", "soft_targets.pt", "distilled.pt")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_healthy(url: str, proc: subprocess.Popen, log: Path, deadline_s: float = 180):
    """Poll /health until the server answers; fail with its log if it exits or never does."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:  # refused while it starts up, or a timeout
            pass
        time.sleep(0.5)
    pytest.fail(f"mlflow server at {url} did not answer in {deadline_s:.0f} s:\n"
                f"{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`mlflow server` on 127.0.0.1 and a free port, as the README starts a team's; yields its URL
    and the folder its proxied artifacts land in."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    artifacts, log = folder / "artifacts", folder / "server.log"
    url = f"http://127.0.0.1:{free_port()}"
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
           "--port", url.rsplit(":", 1)[1], "--workers", "1",
           "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
           "--artifacts-destination", str(artifacts)]
    server_env = {k: v for k, v in env().items() if k != "MLFLOW_TRACKING_URI"}
    # No job runner: MLflow 3's GenAI jobs (unused here) start 8 more Python processes that
    # would compete with the pipeline for this machine's cores.
    server_env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    with open(log, "w") as out:
        # Its own process group: `mlflow server` runs uvicorn as a child, which must stop too.
        proc = subprocess.Popen(cmd, cwd=folder, env=server_env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_healthy(url, proc, log)
        yield url, artifacts
    finally:
        for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=wait_s)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue


def dvc(cwd: Path, url: str, *args: str) -> str:
    """`dvc <args>` in `cwd` with MLflow pointed at the server (project_repo.sh unsets it)."""
    proc = subprocess.run(["dvc", *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**env(), "MLFLOW_TRACKING_URI": url})
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def repo(tmp_path_factory, server) -> Path:
    """The project on digits after one `dvc repro` that logged to the server."""
    repo = tmp_path_factory.mktemp("repo")
    make_project_repo(repo)
    dvc(repo, server[0], "repro")
    return repo


def sha256s(folder: Path) -> dict[str, str]:
    return {f: hashlib.sha256((folder / f).read_bytes()).hexdigest() for f in MODEL_FILES}


# In a fresh interpreter that cannot import this checkout, as a teammate would: the model and
# its code come through the server alone.
LOAD_THROUGH_SERVER = """import sys, mlflow, mlflow.pytorch, torch
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pytorch.load_model(sys.argv[2])
test = torch.load(sys.argv[3])
print(int((model(test["x"]).argmax(1) != test["y"]).sum()))
"""


def test_every_stage_logs_to_the_shared_server(server, repo, tmp_path):
    url, artifacts = server
    client = MlflowClient(url)
    exp = client.get_experiment_by_name("knowledge-distillation")
    # The server chose the artifact root: its proxy, not a folder beside the repository.
    assert exp.artifact_location.startswith("mlflow-artifacts:")
    found = client.search_runs([exp.experiment_id])
    head = sh(repo, "git", "rev-parse", "--short=7", "HEAD").strip()
    assert sorted(r.info.run_name for r in found) == sorted([*STAGE_RUNS, head])  # one each
    assert all(r.info.status == "FINISHED" for r in found)
    runs = {r.info.run_name: r for r in found}

    for stage, name in MODELS.items():
        summary = metrics_file(repo, name)
        assert {k: runs[stage].data.metrics[k] for k in summary} == pytest.approx(summary)
    pipeline = runs[head]
    assert pipeline.data.tags["run_type"] == "pipeline"
    assert pipeline.data.tags["distill_run_id"] == runs["distill"].info.run_id
    for name in MODELS.values():
        assert pipeline.data.metrics[f"{name}_test_errors"] == metrics_file(repo, name)["test_errors"]

    # Artifacts went through the proxy into the server's folder; nothing MLflow beside the repo.
    report = client.download_artifacts(pipeline.info.run_id, "report.md", str(tmp_path))
    assert Path(report).read_text() == (repo / "report/report.md").read_text()
    assert len(list(artifacts.rglob("MLmodel"))) == len(MODELS)
    assert [p.name for p in artifacts.rglob("accuracy.png")] == ["accuracy.png"]
    for local in ("mlflow.db", "mlartifacts", "mlruns"):
        assert not (repo / local).exists(), local

    # The registered distilled student loads back through the server and scores what
    # metrics/distilled.json says on the stored test split.
    version = client.get_model_version("distilled-student", "1")
    assert version.run_id == runs["distill"].info.run_id
    proc = subprocess.run(
        [sys.executable, "-I", "-c", LOAD_THROUGH_SERVER, url, "models:/distilled-student/1",
         str(repo / "data/digits/test.pt")], cwd=tmp_path, capture_output=True, text=True,
        timeout=300, env=env())  # -I: no PYTHONPATH, no working folder on sys.path
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.split()[-1]) == metrics_file(repo, "distilled")["test_errors"]


def test_a_second_clone_pulls_from_the_dvc_remote_and_retrains_nothing(server, repo,
                                                                       tmp_path):
    url = server[0]
    # The team's two shared places: a bare git repository (origin) and a DVC remote folder.
    origin, remote, clone = tmp_path / "origin.git", tmp_path / "dvc-remote", tmp_path / "clone"
    sh(tmp_path, "git", "init", "-q", "--bare", "-b", "main", str(origin))
    dvc(repo, url, "remote", "add", "-d", "shared", str(remote))
    sh(repo, "git", "add", "-A")  # dvc.lock, metrics, plots, report, .dvc/config
    sh(repo, "git", "commit", "-qm", "pipeline run, DVC remote")
    sh(repo, "git", "remote", "add", "origin", str(origin))
    sh(repo, "git", "push", "-q", "origin", "main")
    dvc(repo, url, "push")
    built = sha256s(repo / "model")

    sh(tmp_path, "git", "clone", "-q", str(origin), str(clone))
    dvc(clone, url, "pull")
    assert sha256s(clone / "model") == built
    assert "Data and pipelines are up to date." in dvc(clone, url, "status")
    client = MlflowClient(url)
    exp_id = client.get_experiment_by_name("knowledge-distillation").experiment_id
    runs_before = len(client.search_runs([exp_id]))

    out = dvc(clone, url, "repro")
    assert "Running stage" not in out, out
    for stage in ("check", "download", *STAGE_RUNS[1:], "report"):
        assert f"Stage '{stage}' didn't change, skipping" in out, out
    assert sha256s(clone / "model") == built
    assert len(client.search_runs([exp_id])) == runs_before  # nothing ran, nothing logged

    # An experiment shared through the git remote: its refs by git, its outputs by the DVC remote.
    dvc(repo, url, "exp", "run", "-n", "t2", "-S", "T=2")
    dvc(repo, url, "exp", "push", "origin", "t2")
    dvc(clone, url, "exp", "pull", "origin", "t2")
    dvc(clone, url, "exp", "apply", "t2")
    assert metrics_file(clone, "distilled") == metrics_file(repo, "distilled")
    assert sha256s(clone / "model") == sha256s(repo / "model") != built
