"""Queued or alone, the same bytes: experiments run by `dvc queue start -j 2` (stages side by side,
each on its share of the cores) write exactly what `dvc repro` writes when it runs the same params
alone, on three threads (a count no queued stage takes on a machine of up to 5 cores). Digits,
one epoch per model, a convolutional teacher.
"""

import hashlib
from pathlib import Path

import dvc.api
import pytest

from tests.project_repo import env, make_project_repo, sh
from tests.test_numerics import OUTPUTS
from tests.test_pipeline_e2e import run_queue

pytestmark = pytest.mark.slow  # DVC over the whole pipeline, three times: minutes


def outputs(repo: Path) -> dict[str, str]:
    return {rel: hashlib.sha256((repo / rel).read_bytes()).hexdigest()[:16] for rel in OUTPUTS}


def experiment(repo: Path, seed: int) -> str:
    (name,) = [r["Experiment"] for r in dvc.api.exp_show(repo=str(repo))
               if r["Experiment"] and r["typ"] != "baseline" and r["seed"] == seed]
    return name


def test_queued_at_j2_equals_alone_on_three_threads(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    make_project_repo(repo, teacher={"arch": "cnn:8-16", "dropout": 0.3})
    sh(repo, "dvc", "exp", "run", "--queue", "-S", "seed=1,2")
    run_queue(repo, jobs=2)
    monkeypatch.setattr("tests.project_repo.env", lambda: {**env(), "OMP_NUM_THREADS": "3"})
    sh(repo, "dvc", "exp", "apply", experiment(repo, 1))
    queued = outputs(repo)
    out = sh(repo, "dvc", "repro", "-f")  # every stage rerun here, alone, on three threads
    assert "Running stage 'teacher'" in out and "Running stage 'distill'" in out
    assert outputs(repo) == queued
