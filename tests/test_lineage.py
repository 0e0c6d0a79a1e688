"""Who may close whose run: a RUNNING run is marked KILLED only when its process is provably gone
on this very machine (same boot, same PID namespace), never a run of another machine, container
or boot that shares the host name and the store. Other boots and namespaces are simulated by
crafting the `process` tag; a dead process is a short subprocess, spawned and reaped."""

import os
import socket
import subprocess
import sys

import mlflow
import pytest

from kd.process import identity
from kd.track import run_ends


def dead_process() -> str:
    """The `process_id` of a process of this boot and namespace that has ended and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    process = identity.process_id(proc.pid)  # unreaped until wait(): /proc still shows it
    proc.wait()
    return process


def with_field(process: str, index: int, value: str) -> str:
    """`process` with field `index` (0 boot id, 1 PID namespace, 2 PID, 3 start time) replaced."""
    fields = process.split(":")
    fields[index] = value
    return ":".join(fields)


def another_boot(process: str) -> str:
    return with_field(process, 0, "0b0b0b0b-0000-4000-8000-000000000000")


def another_namespace(process: str) -> str:
    return with_field(process, 1, "4026530000")


def old_format(process: str) -> str:
    """The id as it was written before PID namespaces were recorded: boot id, PID, start time."""
    boot, _, pid, started = process.split(":")
    return f"{boot}:{pid}:{started}"


def test_the_id_names_boot_namespace_pid_and_start_time():
    boot, namespace, pid, started = identity.process_id().split(":")
    assert boot == identity._boot_id() and boot
    assert namespace == str(os.stat("/proc/self/ns/pid").st_ino)
    assert pid == str(os.getpid()) and started.isdigit()
    assert identity.namespace_prefix() == f"{boot}:{namespace}:"
    assert "_" not in identity.process_id()  # staging folders swap ':' for '_' and back


def test_a_process_is_gone_only_when_provably_so():
    me = identity.process_id()
    assert not identity.process_gone(me)
    assert identity.process_gone(with_field(me, 3, str(int(me.split(":")[3]) + 1)))  # PID reused
    dead = dead_process()
    assert identity.process_gone(dead)
    # The same dead PID, but given by another boot or in another PID namespace: not provable here
    assert not identity.process_gone(another_boot(dead))
    assert not identity.process_gone(another_namespace(dead))
    # The old format and anything unreadable: never judged
    for stray in (old_format(dead), with_field(dead, 1, ""), f"{dead}:1", "", "x",
                  with_field(dead, 2, "-1"), with_field(dead, 2, "1" * 12), dead.upper()):
        assert not identity.process_gone(stray), stray


def test_without_proc_nothing_is_judged(monkeypatch):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    monkeypatch.setattr(identity, "_boot_id", lambda: "")
    monkeypatch.setattr(identity, "_pid_namespace", lambda: "")
    monkeypatch.setattr(identity, "_start_time", lambda pid: None)
    assert identity.process_id() == f"::{os.getpid()}:"
    assert identity.namespace_prefix() is None
    assert not identity.process_gone(f"::{dead.pid}:")
    assert not identity.process_gone(identity.process_id())


@pytest.fixture
def client(mlflow_store):
    return mlflow.MlflowClient(mlflow_store)


def test_only_runs_of_dead_processes_of_this_boot_and_namespace_are_closed(client):
    exp = client.create_experiment("dead-runs")
    dead = dead_process()
    processes = {
        "dead": dead,
        "dead, under another host name": dead_process(),  # the host tag is for people to read
        "live": identity.process_id(),
        "another boot": another_boot(dead),
        "another PID namespace": another_namespace(dead),
        "old format": old_format(dead),
        "unreadable": "not-a-process",
    }
    runs, models = {}, {}
    for name, process in processes.items():
        host = "elsewhere" if "another host" in name else socket.gethostname()
        run = client.create_run(exp, run_name=name, tags={"host": host, "process": process})
        runs[name] = run.info.run_id
        models[name] = client.create_logged_model(exp, source_run_id=run.info.run_id).model_id

    run_ends.close_dead_runs(client, exp)

    closed = {"dead", "dead, under another host name"}
    assert {name: (client.get_run(runs[name]).info.status,
                   str(client.get_logged_model(models[name]).status)) for name in processes} == {
        name: ("KILLED", "FAILED") if name in closed else ("RUNNING", "PENDING")
        for name in processes}


def test_without_proc_no_run_is_closed(client, monkeypatch):
    exp = client.create_experiment("no-proc")
    run = client.create_run(exp, tags={"host": socket.gethostname(), "process": dead_process()})
    monkeypatch.setattr(identity, "_pid_namespace", lambda: "")
    run_ends.close_dead_runs(client, exp)
    assert client.get_run(run.info.run_id).info.status == "RUNNING"


def test_staging_folders_of_dead_processes_alone_are_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    dead = dead_process()
    live = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                            stdin=subprocess.PIPE)
    try:
        kept = [identity.process_id(live.pid), another_boot(dead), another_namespace(dead),
                old_format(dead)]
        folders = {p: tmp_path / ".tmp" / f"mlflow-{p.replace(':', '_')}" for p in [dead, *kept]}
        for folder in folders.values():
            folder.mkdir(parents=True)
        mine = run_ends.staging_dir()
        assert not folders[dead].exists()
        assert all(folders[p].is_dir() for p in kept)
        assert mine.name == f"mlflow-{identity.process_id().replace(':', '_')}" and mine.is_dir()
    finally:
        live.stdin.close()
        live.wait()
