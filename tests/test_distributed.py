"""Data-parallel stages under torchrun: 2 CPU ranks with gloo on digits (kd/process/distributed.py).

One torchrun per stage, as dvc.yaml's `${launch} -m stages.<name>` starts it, compared with the
same stage run in one process on the same data and teacher.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import mlflow
import pytest
import torch

from kd.process import distributed
from kd.process.distributed import TIMEOUT
from tests.conftest import ROOT, hash_tree, metrics_file, project, run_stage, tiny_params, write_params

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def torchrun(folder, *args, check=True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([*TORCHRUN, *args], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT.total_seconds())
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def acc(folder, name):
    return metrics_file(folder, name)["test_acc"]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Teacher and soft targets in one process, then teacher, soft targets and distill with 2
    ranks (to other file names where a 1-process output is kept for comparison)."""
    with project(tmp_path_factory, "ddp") as (folder, uri):
        raw = tiny_params()
        for section in ("teacher", "distill"):
            raw[section]["epochs"] = 6
        write_params(folder, raw)
        for name in ("download", "teacher", "soft_targets"):
            run_stage(name)
        before = set(hash_tree(folder))
        outs = {"teacher": ["--model", "model/teacher2.pt", "--metrics", "metrics/teacher2.json",
                            "--plots", "plots/teacher2.csv"],
                "soft_targets": ["--out", "model/soft_targets2.pt"],  # from the 1-process teacher
                "distill": []}
        logs = {name: torchrun(folder, "-m", f"stages.{name}", *argv) for name, argv in outs.items()}
        yield folder, uri, before, logs


@pytest.mark.slow
def test_two_ranks_train_to_the_one_process_accuracy(ranks):
    folder, *_ = ranks
    assert abs(acc(folder, "teacher2") - acc(folder, "teacher")) <= 0.01
    assert acc(folder, "distilled") > 0.8


@pytest.mark.slow
def test_gathered_soft_targets_equal_the_one_process_ones(ranks):
    folder, *_ = ranks
    one, two = (torch.load(folder / "model" / f, weights_only=True)
                for f in ("soft_targets.pt", "soft_targets2.pt"))
    for split in ("train", "val", "test"):
        torch.testing.assert_close(two[split], one[split], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_rank_zero_alone_writes_prints_and_logs_one_run_per_stage(ranks):
    folder, uri, before, logs = ranks
    new = {f for f in set(hash_tree(folder)) - before if not f.startswith("mlartifacts")}
    assert new == {"model/teacher2.pt", "metrics/teacher2.json", "plots/teacher2.csv",
                   "model/soft_targets2.pt", "model/distilled.pt", "metrics/distilled.json",
                   "plots/distilled.csv"}  # no second copy, no temporary file left behind
    assert logs["teacher"].stdout.count("teacher epoch 6/6") == 1
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    by_world = sorted((r.info.run_name, r.data.params.get("world_size"), r.info.status)
                      for r in runs if r.info.run_name != "download")
    assert by_world == [("distill", "2", "FINISHED"), ("soft_targets", "1", "FINISHED"),
                        ("soft_targets", "2", "FINISHED"), ("teacher", "1", "FINISHED"),
                        ("teacher", "2", "FINISHED")]


@pytest.mark.slow
def test_a_failing_rank_fails_the_whole_stage_without_writing(ranks):
    folder, *_ = ranks
    before = hash_tree(folder / "model")
    t0 = time.monotonic()
    proc = torchrun(folder, str(ROOT / "tests" / "failing_rank.py"), check=False)
    assert proc.returncode != 0
    assert "injected failure on rank 1" in proc.stderr
    assert time.monotonic() - t0 < 120  # torchrun stops rank 0 at once, long before TIMEOUT
    assert hash_tree(folder / "model") == before


def test_a_batch_size_the_ranks_cannot_share_equally_is_refused(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 4)
    distributed.check_batch("teacher", 128)
    with pytest.raises(distributed.PipelineError, match="teacher.batch_size 126 must be divisible "
                                                        r"by the number of ranks \(4\)"):
        distributed.check_batch("teacher", 126)

