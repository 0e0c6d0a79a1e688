"""The pieces of failure handling, each on its own and quick: a stop signal and the end of `dvc`
(kd/process/interrupt.py), outputs put back from DVC's cache (kd/process/restore_outputs.py),
a store that is down or locked (kd/track/store.py, kd/track/mlflow_runs.py), a params file
changed under a pipeline (kd/process/params_watch.py). tests/test_interrupts.py drives the same
through DVC."""

import contextlib
import errno
import hashlib
import http.server
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from kd.process import params_watch, recorded_hashes, restore_outputs
from kd.track import store, store_access
from tests.conftest import ROOT


def stage_like(work: str = "time.sleep(60)\n") -> str:
    """A process that stops as a stage does: the handlers installed, then `work` under
    friendly_errors."""
    return textwrap.dedent("""
        import sys, time
        from kd.process import cli
        from kd.process import interrupt
        interrupt.install()
        print("ready", flush=True)
        with cli.friendly_errors():
    """) + textwrap.indent(work, "    ")


CHILD = stage_like()


def spawn(code: str, **extra_env) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **extra_env})
    assert proc.stdout.readline().strip() == "ready"
    return proc


@pytest.mark.parametrize("sig,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143),
                                        (signal.SIGHUP, 129)])
def test_a_stop_signal_is_one_line_and_128_plus_its_number(sig, status):
    proc = spawn(CHILD)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == status
    assert err == f"interrupted: stage ({sig.name})\n"


def test_a_second_signal_while_closing_ends_at_once():
    """The first signal stops the work; closing the run is a store call, which holds signals
    back until it returns (kd/interrupt.deferred): the second ends the process at once."""
    proc = spawn(stage_like("try:\n    time.sleep(60)\n"
                            "finally:  # the run being closed, slowly\n"
                            "    with interrupt.deferred():\n        time.sleep(60)\n"))
    proc.send_signal(signal.SIGINT)
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130
    assert err == "interrupted: stage (SIGINT)\n"


def test_a_stage_stops_when_the_dvc_that_runs_it_ends(tmp_path):
    """`dvc` killed (SIGKILL: no chance to pass anything on), with a shell between it and the
    stage as dash leaves one: the stage sees it gone within seconds and stops."""
    fake_dvc = tmp_path / "dvc"
    fake_dvc.write_text(f"#!{sys.executable}\nimport subprocess, sys\n"
                        f"subprocess.run(['/bin/sh', '-c', sys.argv[1] + '; true'])\n")
    fake_dvc.chmod(0o755)
    out = tmp_path / "stage.err"
    child = f"{sys.executable} -c '{CHILD}' 2> {out}"
    dvc = subprocess.Popen([str(fake_dvc), child], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                           env={**os.environ, "DVC_STAGE": "stage"})
    assert dvc.stdout.readline().strip() == "ready"
    dvc.kill()
    dvc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "interrupted" not in out.read_text():
        time.sleep(0.2)
    assert out.read_text() == "interrupted: stage (SIGTERM)\n"


def test_outside_a_stage_process_ctrl_c_stays_python_s():
    """Importing the stages (tests, notebooks) installs nothing."""
    code = "import stages.check, signal; print(signal.getsignal(signal.SIGINT).__name__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert (out.returncode, out.stdout.strip()) == (0, "default_int_handler"), out.stderr[-2000:]


def dvc_repo(tmp_path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path,
                   check=True, env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    return tmp_path


def cache_object(repo: Path, data: bytes) -> str:
    md5 = hashlib.md5(data).hexdigest()
    path = repo / ".dvc/cache/files/md5" / md5[:2] / md5[2:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return md5


def test_missing_outputs_come_back_from_dvc_s_cache_and_present_ones_stay(tmp_path):
    repo = dvc_repo(tmp_path)
    files = {"model/teacher.pt": b"weights", "metrics/teacher.json": b'{"test_acc": 0.9}\n'}
    folder = {"a.pt": b"train split", "sub/b.json": b"{}"}
    manifest = json.dumps([{"relpath": rel, "md5": cache_object(repo, data)}
                           for rel, data in sorted(folder.items())]).encode()
    dir_md5 = hashlib.md5(manifest).hexdigest() + ".dir"  # how DVC names a folder's manifest
    (repo / ".dvc/cache/files/md5" / dir_md5[:2]).mkdir(parents=True, exist_ok=True)
    (repo / ".dvc/cache/files/md5" / dir_md5[:2] / dir_md5[2:]).write_bytes(manifest)
    outs = [{"path": p, "md5": cache_object(repo, d)} for p, d in files.items()]
    outs.append({"path": "data/digits", "md5": dir_md5})
    (repo / "dvc.lock").write_text(json.dumps({"schema": "2.0", "stages": {"teacher": {
        "outs": [{**o, "hash": "md5"} for o in outs]}}}))
    (repo / "metrics").mkdir()
    (repo / "metrics/teacher.json").write_text("kept as it is\n")

    outcome = restore_outputs.restore_outputs("teacher", repo)
    assert sorted(outcome.restored) == ["data/digits", "model/teacher.pt"]
    assert outcome.lost == {} and outcome.note() == ""
    assert (repo / "model/teacher.pt").read_bytes() == b"weights"
    assert (repo / "metrics/teacher.json").read_text() == "kept as it is\n"
    assert {str(p.relative_to(repo / "data/digits")): p.read_bytes()
            for p in (repo / "data/digits").rglob("*") if p.is_file()} == folder
    assert restore_outputs.restore_outputs("teacher", repo).restored == []  # nothing missing


def test_restoring_is_quiet_outside_dvc_and_names_what_it_cannot_put_back(tmp_path, monkeypatch):
    monkeypatch.delenv("DVC_STAGE", raising=False)
    assert restore_outputs.restore_outputs(root=tmp_path) == restore_outputs.Outcome()  # no DVC
    assert restore_outputs.restore_outputs("teacher", tmp_path).note() == ""  # no dvc.lock
    repo = dvc_repo(tmp_path)
    (repo / "dvc.lock").write_text(json.dumps({"stages": {"teacher": {"outs": [
        {"path": "model/teacher.pt", "md5": "0" * 32}]}}}))
    outcome = restore_outputs.restore_outputs("teacher", repo)  # not in the cache
    assert outcome.restored == [] and not (repo / "model/teacher.pt").exists()
    assert outcome.note() == ("; not restored: model/teacher.pt (not in DVC's cache; `dvc pull` "
                              "fetches it from a remote); then run `python -m tools.restore "
                              "--stage teacher`")
    (repo / "dvc.lock").write_text("stages: [")
    assert "dvc.lock (unreadable" in restore_outputs.restore_outputs("teacher", repo).note()


def test_a_corrupt_cache_object_or_a_failed_copy_does_not_stop_the_other_outputs(tmp_path):
    """Each output is tried: a cache object whose bytes lost their md5 is named and not copied
    (as `dvc checkout` refuses it), a write that fails is named, and the rest come back."""
    repo = dvc_repo(tmp_path)
    outs = [{"path": p, "md5": cache_object(repo, d)} for p, d in (
        ("model/teacher.pt", b"weights"), ("plots/teacher.csv", b"epoch\n1\n"),
        ("metrics/teacher.json", b"{}\n"))]
    good = {"metrics/teacher.json": b"{}\n"}
    obj = repo / ".dvc/cache/files/md5" / outs[0]["md5"][:2] / outs[0]["md5"][2:]
    obj.write_bytes(b"weightz")  # a flipped byte in the cache
    (repo / "plots").write_text("a file where the folder goes")
    (repo / "dvc.lock").write_text(json.dumps({"stages": {"teacher": {
        "outs": [{**o, "hash": "md5"} for o in outs]}}}))
    outcome = restore_outputs.restore_outputs("teacher", repo)
    assert outcome.restored == list(good)
    assert {p: (repo / p).read_bytes() for p in good} == good
    assert not (repo / "model/teacher.pt").exists()
    assert "is corrupt (its md5 differs)" in outcome.lost["model/teacher.pt"]
    assert "a file is where a folder should be" in outcome.lost["plots/teacher.csv"]
    assert outcome.note().endswith("then run `python -m tools.restore --stage teacher`")


def test_transient_store_errors_are_told_from_lasting_ones():
    locked = sqlite3.OperationalError("database is locked")
    assert store.transient(locked)
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError as e:
            raise RuntimeError("API request to http://x failed with exception") from e
    except RuntimeError as wrapped:
        assert store.transient(wrapped)
    assert not store.transient(sqlite3.OperationalError("attempt to write a readonly database"))
    assert not store.transient(ValueError("no such experiment"))


def test_a_file_size_limit_or_a_full_disk_is_reported_at_once_not_waited_on(tmp_path):
    """`ulimit -f 100`: SQLite says only 'disk I/O error', inside an MlflowException whose HTTP
    status is 500; it is a lasting error, reported at once with the limit, not retried for 60 s."""
    code = textwrap.dedent(f"""
        import resource, time
        resource.setrlimit(resource.RLIMIT_FSIZE, (100 * 1024, 100 * 1024))
        import mlflow
        from kd.track import store
        mlflow.set_tracking_uri("sqlite:///{tmp_path / 'mlflow.db'}")
        t0 = time.monotonic()
        try:
            store.patiently(lambda: mlflow.create_experiment("x"), wait=60)
        except store.TrackingError as e:
            print(e.transient, round(time.monotonic() - t0), e, sep="|")
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    was_transient, seconds, message = out.stdout.strip().split("|")
    assert was_transient == "False" and int(seconds) < 10
    assert message.endswith("OperationalError: disk I/O error (this process may write files of "
                            "at most 102,400 bytes: `ulimit -f`)")
    full = OSError(errno.ENOSPC, "No space left on device")
    assert store.permanent(full) and not store.transient(full)
    assert not store.transient(OSError(errno.EFBIG, "File too large"))


def test_patiently_retries_a_transient_error_then_gives_up_with_one_line(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///store.db")
    calls = []

    def flaky():
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise sqlite3.OperationalError("database is locked")
        return "done"
    assert store.patiently(flaky, wait=10) == "done"
    assert len(calls) == 3 and 1.2 < calls[-1] - calls[0] < 3  # 0.5 s, then 1 s apart

    began = time.monotonic()
    with pytest.raises(store.TrackingError) as caught:
        store.patiently(lambda: (_ for _ in ()).throw(sqlite3.OperationalError("database is "
                                                                                "locked")), wait=2)
    assert time.monotonic() - began < 3
    assert str(caught.value) == "MLflow store sqlite:///store.db: database is locked (gave up after 2 s)"
    with pytest.raises(store.TrackingError, match="readonly") as caught:  # never retried
        store.patiently(lambda: (_ for _ in ()).throw(
            sqlite3.OperationalError("attempt to write a readonly database")), wait=60)
    assert not caught.value.transient


STORE_CALL = textwrap.dedent("""
    import os, signal, threading, mlflow
    from kd.process import cli
    from kd.process import interrupt
    from kd.track import store, store_access
    interrupt.install()
    mlflow.MlflowClient().search_experiments()  # the store created before the clock starts
    print("ready", flush=True)

    def query():  # a stop arrives while the store is being read
        os.kill(os.getpid(), signal.SIGTERM)
        mlflow.MlflowClient().search_runs(["0"])
        print("the call returned", flush=True)

    def down():
        raise ConnectionError("Connection refused")

    with cli.friendly_errors():
        if CASE == "call":
            store.patiently(query)
        else:  # the store is down: the stop comes during the pause between two tries
            threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
            store.patiently(down, wait=60)
        print("went on after the stop", flush=True)
""")


def test_a_stop_waits_for_the_store_call_in_progress_not_for_the_retries(tmp_path):
    """A signal raised inside SQLAlchemy mid-query left MLflow's connection half-closed and
    printed SQLAlchemy's traceback ("Error closing cursor") under the stage's one line; the stop
    is held until the call returns. A store that is down is not waited out after a stop."""
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    proc = spawn("CASE = 'call'\n" + STORE_CALL, **env)
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out, err) == (143, "the call returned\n", "interrupted: stage (SIGTERM)\n")

    proc = spawn("CASE = 'down'\n" + STORE_CALL, **env)
    began = time.monotonic()
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out, err) == (143, "", "interrupted: stage (SIGTERM)\n")
    assert time.monotonic() - began < 5  # not the 60 s wait


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_probe_answers_in_seconds(tmp_path, monkeypatch):
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(store.TrackingError, match="unreachable .*Connection refused"):
        store_access.probe(url)
    monkeypatch.setattr(store, "CONNECT_SECONDS", 0.5)
    with socket.socket() as silent:  # takes the connection, never answers: a hung server
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        began = time.monotonic()
        with pytest.raises(store.TrackingError, match="unreachable .*timed out"):
            store_access.probe(f"http://127.0.0.1:{silent.getsockname()[1]}")
        assert time.monotonic() - began < 2
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.handle_request, daemon=True).start()
    store_access.probe(f"http://127.0.0.1:{server.server_port}")  # answers 501: reachable, so it passes
    server.server_close()
    db = tmp_path / "mlflow.db"
    store_access.probe(f"sqlite:///{db}")  # not made yet: fine, the first stage makes it
    sqlite3.connect(db).execute("create table t (x)").connection.commit()
    store_access.probe(f"sqlite:///{db}")
    monkeypatch.setattr(store, "CONNECT_SECONDS", 0.3)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(store.TrackingError, match="database is locked"):
            store_access.probe(f"sqlite:///{db}")
    finally:
        holder.execute("ROLLBACK")


def test_a_params_file_changed_under_a_pipeline_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".dvc/tmp").mkdir(parents=True)
    params = tmp_path / "params.yaml"
    params.write_text("T: 4\n")
    monkeypatch.setattr(params_watch.interrupt, "dvc_process", lambda: "boot:1:100:5")
    params_watch.record(params)  # the check stage of dvc process 100
    params_watch.loaded(params)  # a later stage, same bytes: fine
    params_watch.unchanged()

    params.write_text("T: 5\n")  # a second `dvc exp run` wrote its -S
    with pytest.raises(params_watch.ParamsChanged, match="changed while this stage ran"):
        params_watch.unchanged()
    with pytest.raises(params_watch.ParamsChanged, match="changed since this pipeline's check"):
        params_watch.loaded(params)
    monkeypatch.setattr(params_watch.interrupt, "dvc_process", lambda: "boot:1:200:7")
    params_watch.loaded(params)  # another `dvc` process (a later `dvc repro -s`): its own file


@pytest.mark.parametrize("ending,status", [("interrupt", "KILLED"), ("error", "FAILED"),
                                           ("success", "FINISHED")])
def test_a_run_ends_with_how_its_stage_ended_and_no_model_stays_pending(mlflow_store, ending,
                                                                        status):
    """Ctrl-C while a model was being logged left it PENDING for good: the run's end marks every
    PENDING logged model of it FAILED, whatever ended the stage."""
    import mlflow

    from kd.errors import PipelineError
    from kd.process import interrupt
    from kd.track import mlflow_runs
    with contextlib.suppress(interrupt.Interrupted, PipelineError):
        with mlflow_runs.stage_run("teacher", "digits", {"seed": 0}) as run:
            model = mlflow.initialize_logged_model(name="teacher")  # logging, cut short
            if ending == "interrupt":
                raise interrupt.Interrupted(signal.SIGINT)
            if ending == "error":
                raise PipelineError("model/teacher.pt: cannot write it")
    client = mlflow.MlflowClient()
    assert client.get_run(run.run_id).info.status == status
    assert str(client.get_logged_model(model.model_id).status) == "FAILED"


def test_tools_restore_puts_back_what_a_kill_9_left_missing(tmp_path, monkeypatch, capsys):
    from tools import restore
    repo = dvc_repo(tmp_path)
    outs = [{"path": "metrics/teacher.json", "md5": cache_object(repo, b"{}\n")},
            {"path": "report/report.md", "md5": cache_object(repo, b"# report\n")}]
    (repo / "dvc.lock").write_text(json.dumps({"stages": {"teacher": {"outs": outs[:1]},
                                                          "report": {"outs": outs[1:]}}}))
    monkeypatch.chdir(repo)
    monkeypatch.delenv("DVC_STAGE", raising=False)
    restore.main([])
    assert capsys.readouterr().out == "restored metrics/teacher.json\nrestored report/report.md\n"
    assert (repo / "report/report.md").read_text() == "# report\n"
    restore.main(["--stage", "teacher"])
    assert capsys.readouterr().out == "nothing to restore\n"


def test_tools_restore_refuses_a_corrupt_cache_object_in_one_line(tmp_path, monkeypatch, capsys):
    from tools import restore
    repo = dvc_repo(tmp_path)
    md5 = cache_object(repo, b"weights")
    (repo / ".dvc/cache/files/md5" / md5[:2] / md5[2:]).write_bytes(b"weightz")
    (repo / "dvc.lock").write_text(json.dumps({"stages": {"teacher": {"outs": [
        {"path": "model/teacher.pt", "md5": md5, "hash": "md5"}]}}}))
    monkeypatch.chdir(repo)
    monkeypatch.delenv("DVC_STAGE", raising=False)
    with pytest.raises(SystemExit) as stop:
        restore.main([])
    assert stop.value.code == 1
    out, err = capsys.readouterr()
    assert out == "nothing to restore\n"
    assert err.startswith("error: not restored: model/teacher.pt (DVC's cache copy ")
    assert err.count("\n") == 1 and not (repo / "model/teacher.pt").exists()


def _slow_restore_repo(tmp_path: Path, lose: str | None = None) -> tuple[Path, dict]:
    """A DVC repository whose dvc.lock records three teacher outputs, all missing from the
    workspace as DVC leaves them while the stage runs; `lose` is left out of the cache."""
    repo = dvc_repo(tmp_path)
    data = {"model/teacher.pt": b"weights", "metrics/teacher.json": b"{}\n",
            "plots/teacher.csv": b"epoch\n1\n"}
    outs = [{"path": p, "md5": cache_object(repo, d) if p != lose else "0" * 32, "hash": "md5"}
            for p, d in data.items()]
    (repo / "dvc.lock").write_text(json.dumps({"stages": {"teacher": {"outs": outs}}}))
    return repo, {p: d for p, d in data.items() if p != lose}


# Each copy back takes a second, as a copy of a large model over a slow disk can.
SLOW_COPIES = ("from kd.process import restore_outputs as r\n"
               "_copy = r._copy_back\n"
               "r._copy_back = lambda *a: (time.sleep(1), _copy(*a))[1]\n")


@pytest.mark.parametrize("closing", [False, True])
def test_more_stop_signals_wait_for_the_outputs_to_be_put_back(tmp_path, closing):
    """Ctrl-C three times, a second apart: the copies back from DVC's cache are not cut short,
    whether the first stop is still closing the run (a store call, deferred: the second signal
    ends the process, after the restore) or already restoring (the others wait)."""
    repo, data = _slow_restore_repo(tmp_path)
    work = ("try:\n    time.sleep(60)\nfinally:\n    with interrupt.deferred():\n"
            "        time.sleep(60)\n") if closing else "time.sleep(60)\n"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_COPIES + stage_like(work)], cwd=repo,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "DVC_STAGE": "teacher", "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "ready"
    for _ in range(3):
        proc.send_signal(signal.SIGINT)
        time.sleep(1)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert err == "interrupted: stage (SIGINT)\n"
    assert {p: (repo / p).read_bytes() for p in data} == data


def test_a_stop_names_the_outputs_it_could_not_put_back(tmp_path):
    repo, data = _slow_restore_repo(tmp_path, lose="model/teacher.pt")
    proc = subprocess.Popen([sys.executable, "-c", CHILD], cwd=repo, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "DVC_STAGE": "teacher", "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143
    assert err == ("interrupted: stage (SIGTERM); not restored: model/teacher.pt (not in DVC's "
                   "cache; `dvc pull` fetches it from a remote); then run `python -m "
                   "tools.restore --stage teacher`\n")
    assert {p: (repo / p).read_bytes() for p in data} == data


def test_too_little_address_space_to_load_torch_is_one_line_and_the_outputs_come_back(tmp_path):
    """`ulimit -v` below what torch's libraries need to load: the import fails before the stage's
    own error handling exists; still one line, exit 1, and the outputs DVC deleted put back."""
    import resource
    repo, data = _slow_restore_repo(tmp_path)
    limit = 400 * 1024 * 1024

    def small():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    proc = subprocess.run([sys.executable, "-m", "stages.teacher"], cwd=repo, capture_output=True,
                          text=True, timeout=120, preexec_fn=small,
                          env={**os.environ, "DVC_STAGE": "teacher", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: teacher: out of memory (")
    assert proc.stderr.endswith("; this process may use at most 409,600 KiB of address space "
                                "(`ulimit -v`), too little to load torch: raise it\n")
    assert proc.stderr.count("\n") == 1
    assert {p: (repo / p).read_bytes() for p in data} == data


@pytest.mark.parametrize("where", [None, "--local"])
def test_the_cache_folder_read_without_dvc_is_dvc_s_own(tmp_path, monkeypatch, where):
    """Restoring reads `cache.dir` from DVC's config files itself (no `import dvc` on the way
    out); set by `dvc cache dir`, it must be the folder DVC itself uses."""
    from dvc.repo import Repo
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))  # no user config of the host's
    (tmp_path / "repo").mkdir()
    repo = dvc_repo(tmp_path / "repo")
    if where:
        subprocess.run([sys.executable, "-m", "dvc", "cache", "dir", where, "../elsewhere"],
                       cwd=repo, check=True, env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    with Repo(str(repo)) as dvc:
        assert Path(dvc.cache.local.path) == recorded_hashes.cache_folder(repo) / "files" / "md5"


def test_a_full_disk_under_model_costs_only_the_model_and_says_so(tmp_path, request):
    """model/ on a 1 MiB filesystem, the checkpoint 2 MiB: it cannot come back, the outputs on
    other filesystems do, and the note names it with the reason; no temporary is left there."""
    repo = dvc_repo(tmp_path)
    (repo / "model").mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(repo / "model")],
                      capture_output=True).returncode != 0:
        pytest.skip("needs a tmpfs mount (mount as root)")
    request.addfinalizer(lambda: subprocess.run(["umount", "--lazy", str(repo / "model")]))
    data = {"model/teacher.pt": os.urandom(2 << 20), "metrics/teacher.json": b"{}\n",
            "plots/teacher.csv": b"epoch\n1\n"}
    (repo / "dvc.lock").write_text(json.dumps({"stages": {"teacher": {"outs": [
        {"path": p, "md5": cache_object(repo, d), "hash": "md5"} for p, d in data.items()]}}}))
    outcome = restore_outputs.restore_outputs("teacher", repo)
    assert outcome.restored == ["metrics/teacher.json", "plots/teacher.csv"]
    assert outcome.lost == {"model/teacher.pt": "cannot write it (No space left on device)"}
    assert list((repo / "model").iterdir()) == []
    assert outcome.note() == ("; not restored: model/teacher.pt (cannot write it (No space left "
                              "on device)); then run `python -m tools.restore --stage teacher`")
