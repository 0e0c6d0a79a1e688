"""A stage's share of the cores: every computing stage holds a slot under the store root, and
runs cores // (stages holding one) threads; OMP_NUM_THREADS, when set, wins."""

import subprocess
import sys

import pytest
import torch

from kd import resources
from tests.conftest import ROOT

# Claims a slot the way a stage does, says so, and holds it until its stdin closes.
HOLD_A_SLOT = """import sys
from kd import resources
resources.running_stages()
print("holding", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh store root, this process holding no slot yet, and torch's threads put back."""
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(resources, "_slot", None)
    monkeypatch.setattr(resources, "cores", lambda: 4)
    threads = torch.get_num_threads()
    yield tmp_path
    torch.set_num_threads(threads)


def hold_slots(store, n: int) -> list[subprocess.Popen]:
    procs = []
    for _ in range(n):
        proc = subprocess.Popen([sys.executable, "-c", HOLD_A_SLOT], cwd=ROOT, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                env={"DVC_ROOT": str(store), "PATH": "", "PYTHONPATH": str(ROOT)})
        assert proc.stdout.readline() == "holding\n"
        procs.append(proc)
    return procs


def release(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.stdin.close()
        proc.wait(timeout=60)


def test_a_stage_alone_takes_every_core(store):
    assert resources.share_cores() == 4 == torch.get_num_threads()
    assert resources.running_stages() == 1  # its own slot, counted once however often it asks


def test_stages_side_by_side_split_the_cores_and_take_them_back(store):
    others = hold_slots(store, 1)
    try:
        assert resources.share_cores() == 2 == torch.get_num_threads()
        others += hold_slots(store, 2)
        assert resources.running_stages() == 4
        assert resources.share_cores() == 1  # never zero
        others += hold_slots(store, 2)
        assert resources.share_cores() == 1
    finally:
        release(others)
    # A slot dies with its process: the stage gets every core back at its next epoch.
    assert resources.share_cores() == 4


def test_omp_num_threads_is_respected(store, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    torch.set_num_threads(3)
    others = hold_slots(store, 1)
    try:
        assert resources.share_cores() == 3 == torch.get_num_threads()
    finally:
        release(others)


def test_the_slots_live_under_the_store_root(store):
    resources.share_cores()
    assert [p.name for p in (store / ".tmp" / "cores").iterdir()] == ["slot-0"]
