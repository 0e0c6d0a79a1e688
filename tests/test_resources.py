"""A stage's share of the cores: a process holds a slot under the store root while it computes,
and runs cores // (processes holding one) threads; OMP_NUM_THREADS, when set, wins."""

import fcntl
import os
import subprocess
import sys

import pytest
import torch

from kd.process import cores
from tests.conftest import ROOT

# Another process computing: it holds an exclusive lock on a slot file (argv[1]), says so, and
# keeps it until its stdin closes (no torch import: the test stays fast).
HOLD_A_SLOT = """import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("holding", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh store root, this process holding no slot yet, and torch's threads put back."""
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cores, "_slot", None)
    monkeypatch.setattr(cores, "_depth", 0)
    monkeypatch.setattr(cores, "machine_cores", lambda: 4)
    threads = torch.get_num_threads()
    yield tmp_path
    torch.set_num_threads(threads)


def hold_slots(store, n: int) -> list[subprocess.Popen]:
    folder = store / ".tmp" / "cores"
    folder.mkdir(parents=True, exist_ok=True)
    procs = []
    for _ in range(n):
        slot = folder / f"slot-{100 + len(list(folder.glob('slot-1*')))}"
        proc = subprocess.Popen([sys.executable, "-c", HOLD_A_SLOT, str(slot)], text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert proc.stdout.readline() == "holding\n"
        procs.append(proc)
    return procs


def release(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.stdin.close()
            proc.wait(timeout=60)


def test_a_stage_alone_takes_every_core(store):
    with cores.computing() as threads:
        assert threads == 4 == torch.get_num_threads()
        with cores.computing():  # nested (fit calls predict): still one slot
            assert cores.running_stages() == 1


def test_stages_side_by_side_split_the_cores_and_take_them_back(store):
    others = hold_slots(store, 1)
    try:
        with cores.computing() as threads:
            assert threads == 2 == torch.get_num_threads()
            others += hold_slots(store, 2)
            assert cores.running_stages() == 4
            assert cores.share_cores() == 1  # never zero
            others += hold_slots(store, 2)
            assert cores.share_cores() == 1
            release(others)
            # A slot dies with its process: a count taken now gives every core back.
            assert cores.share_cores() == 4
    finally:
        release(others)


def test_a_slot_is_held_only_while_computing(store):
    with cores.computing():
        pass
    slot = store / ".tmp" / "cores" / "slot-0"
    fd = os.open(slot, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if this process still held it
    finally:
        os.close(fd)
    assert cores.running_stages() == 1


def test_omp_num_threads_is_respected(store, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    torch.set_num_threads(3)
    others = hold_slots(store, 1)
    try:
        with cores.computing() as threads:
            assert threads == 3 == torch.get_num_threads()
    finally:
        release(others)


def _policy_in_a_stage_process(**env: str) -> str:
    """OMP_WAIT_POLICY as a stage process has it once `stages` is imported (before torch)."""
    code = "import os, stages; print(os.environ.get('OMP_WAIT_POLICY'))"
    clean = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**clean, **env},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_a_stage_process_lets_idle_threads_sleep_unless_the_user_says_otherwise():
    assert _policy_in_a_stage_process() == "PASSIVE"
    assert _policy_in_a_stage_process(OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"


def test_the_wait_policy_is_left_alone_once_torch_has_read_it(monkeypatch):
    """In this process torch is loaded: setting the variable now would record a policy that
    OpenMP never used."""
    from kd.process import wait_policy

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    wait_policy.prepare()
    assert "OMP_WAIT_POLICY" not in os.environ
    assert wait_policy.settings() == {"omp_wait_policy": "unset"}
