"""The failures users cause, through the real entry points (`dvc repro`, `dvc exp run`, `dvc
queue`): stopped by Ctrl-C, by SIGTERM to `dvc`, by DVC's queue kill; a tracking store that is
unreachable, locked or lost mid-training; two `dvc exp run` in one workspace; a hostile
experiment name. Each asserts the exit status, the one line, the outputs kept, no run left
RUNNING and no stage process left behind.

The tests share one temporary git repository holding a copy of the project (digits, one epoch per
model, kd/process/interrupt.py's docstring says why a stage watches `dvc`); a long teacher (LONG) gives
each test time to stop it mid-training.
"""

import hashlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest
import yaml

from tests.project_repo import env, make_project_repo, sh

pytestmark = pytest.mark.slow  # each drives DVC over a real pipeline: tens of seconds

LONG = {"teacher.epochs": 100000, "teacher.arch": "mlp:1024-1024"}  # hours: always stopped


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    make_project_repo(repo)
    sh(repo, "dvc", "repro")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "pipeline run")
    return repo


@pytest.fixture
def clean(repo):
    """Each test starts from the committed pipeline run, and leaves no stage process behind."""
    yield repo
    for pid in stage_processes(repo):
        os.kill(pid, signal.SIGKILL)
    sh(repo, "git", "checkout", "params.yaml", "conf/config.yaml")
    sh(repo, "dvc", "checkout", "--force")


def runs(repo: Path) -> list:
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    exp = mlflow.get_experiment_by_name("knowledge-distillation")
    return mlflow.search_runs([exp.experiment_id], output_format="list",
                              order_by=["attributes.start_time DESC"])


def latest(repo: Path, stage: str):
    return next(r for r in runs(repo) if r.info.run_name == stage)


def stage_processes(root: Path) -> list[int]:
    """The `python -m stages.*` processes working in `root` or below (a queued experiment's copy
    is under .dvc/tmp/exps)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            cwd = Path(os.readlink(proc / "cwd"))
        except OSError:
            continue
        if b"-m" in cmd and any(c.startswith(b"stages.") for c in cmd) and \
                (cwd == root or root in cwd.parents):
            found.append(int(proc.name))
    return found


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.5)
    raise AssertionError(f"not within {timeout} s: {what}")


def training(repo: Path, since: float, stage: str = "teacher"):
    """A RUNNING run of `stage` started after `since` (time.time(); not one an earlier test left)
    that has logged an epoch: the stage is in its training loop."""
    for run in runs(repo):
        if run.info.run_name == stage and run.info.status == "RUNNING" and \
                run.info.start_time > since * 1000 and \
                any(k.startswith("epoch/") for k in run.data.metrics):
            return run
    return None


def lock_outs(repo: Path, stage: str) -> dict[str, str]:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {o["path"]: o["md5"] for o in lock["stages"][stage]["outs"]}


def md5s(repo: Path, paths) -> dict[str, str | None]:
    return {p: hashlib.md5((repo / p).read_bytes()).hexdigest() if (repo / p).is_file() else None
            for p in paths}


def set_params(repo: Path, changes: dict) -> None:
    """Edit params.yaml as a user would before `dvc repro` (dotted keys)."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for key, value in changes.items():
        section, _, name = key.rpartition(".")
        (params[section] if section else params)[name] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def start(repo: Path, *cmd: str, **extra_env) -> subprocess.Popen:
    """`cmd` in its own process group (as a terminal runs a foreground job), output to files.
    A variable given as None is unset."""
    out = open(repo.parent / f"{repo.name}.out", "w+")
    err = open(repo.parent / f"{repo.name}.err", "w+")
    variables = {k: v for k, v in {**env(), **extra_env}.items() if v is not None}
    proc = subprocess.Popen(cmd, cwd=repo, stdout=out, stderr=err, text=True,
                            env=variables, start_new_session=True)
    proc.files = (out, err)
    return proc


def output(proc: subprocess.Popen) -> tuple[str, str]:
    """What the command (and the stages it ran) printed so far: stdout, stderr."""
    texts = []
    for fh in proc.files:
        fh.seek(0)
        texts.append(fh.read())
    return texts[0], texts[1]


def assert_stopped_cleanly(repo: Path, err: str, signame: str, run_id: str) -> None:
    """One line from the stage, no traceback, no stage process, the run KILLED, the teacher's
    previous outputs back as dvc.lock records them."""
    wait_for(lambda: not stage_processes(repo), 10, "the stage process ended")
    assert f"interrupted: teacher ({signame})" in err.splitlines(), err
    assert "Traceback" not in err, err
    assert mlflow.MlflowClient().get_run(run_id).info.status == "KILLED"
    outs = lock_outs(repo, "teacher")
    assert md5s(repo, outs) == outs


@pytest.mark.parametrize("shell", ["/bin/bash", None], ids=["bash", "no SHELL"])
@pytest.mark.parametrize("how", ["Ctrl-C", "SIGTERM to dvc"])
def test_stopping_dvc_repro_stops_the_stage_in_seconds(clean, how, shell):
    """DVC runs a stage through `$SHELL -c`: a terminal's bash execs the stage; with SHELL unset
    (CI, cron, a container) dash stays between them, and dies of the Ctrl-C itself once the stage
    has ended, so DVC reports `exited with -2` rather than 130."""
    repo = clean
    began = time.time()
    set_params(repo, LONG)
    proc = start(repo, "dvc", "repro", SHELL=shell)
    run = wait_for(lambda: training(repo, began), 120, "the teacher trains")
    stopped = time.monotonic()
    if how == "Ctrl-C":  # the terminal signals the whole foreground process group
        os.killpg(proc.pid, signal.SIGINT)
    else:  # what `kill`, `timeout` or a cancelled CI job sends to the command the user started
        os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)
    wait_for(lambda: not stage_processes(repo), 10, "the stage process ended")
    assert time.monotonic() - stopped < 10
    out, err = output(proc)
    if how == "Ctrl-C":
        exited = "exited with 130" if shell else "exited with -2"
        assert f"ERROR: failed to reproduce 'teacher': failed to run: python -m stages.teacher, " \
               f"{exited}" in err  # DVC's own line, after the stage's
        assert_stopped_cleanly(repo, err, "SIGINT", run.info.run_id)
    else:
        assert proc.returncode == -signal.SIGTERM
        assert_stopped_cleanly(repo, err, "SIGTERM", run.info.run_id)


def test_ctrl_c_twice_a_second_apart_still_puts_every_output_back(clean):
    """The second Ctrl-C arrives while the first is closing the run or copying the outputs back
    from DVC's cache: it waits for the copies (kd/process/interrupt.py `shielded`)."""
    repo = clean
    began = time.time()
    set_params(repo, LONG)
    proc = start(repo, "dvc", "repro", "-f", "-s", "teacher")
    run = wait_for(lambda: training(repo, began), 120, "the teacher trains")
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(1)
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=30)
    assert_stopped_cleanly(repo, output(proc)[1], "SIGINT", run.info.run_id)


def test_a_corrupt_teacher_is_refused_before_soft_targets_use_it(clean):
    """2000 bytes flipped in model/teacher.pt still unpickle (weights of noise: transfer-set
    accuracy 0.10): the soft_targets stage compares the file with dvc.lock's md5 first."""
    repo = clean
    path = repo / "model/teacher.pt"
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 2000] = bytes(b ^ 0xFF for b in data[middle:middle + 2000])
    path.write_bytes(bytes(data))
    before = md5s(repo, lock_outs(repo, "soft_targets"))
    proc = subprocess.run(["dvc", "repro", "-s", "soft_targets"], cwd=repo, capture_output=True,
                          text=True, timeout=300, env=env())
    assert proc.returncode != 0
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert errors == ["error: model/teacher.pt: its content does not match the md5 dvc.lock "
                      "records for it (corrupt, or changed outside DVC); put it back with `dvc "
                      "checkout -f model/teacher.pt` or rerun its stage with `dvc repro -f -s "
                      "teacher`"], proc.stderr
    assert md5s(repo, before) == before


@pytest.mark.parametrize("kill", [["dvc", "queue", "kill", "-f", "long"],
                                  ["dvc", "queue", "stop", "--kill"]])
def test_the_queue_kill_stops_the_stage(clean, kill):
    repo = clean
    began = time.time()
    sh(repo, "dvc", "exp", "run", "--queue", "-n", "long",
       *[f"-S{k}={v}" for k, v in LONG.items()])
    # The worker it starts lives on, holding the command's output open: not through sh().
    subprocess.run(["dvc", "queue", "start"], cwd=repo, env=env(), stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=True, start_new_session=True)
    try:
        run = wait_for(lambda: training(repo, began), 180, "the queued teacher trains")
        sh(repo, *kill)
        wait_for(lambda: not stage_processes(repo), 10, "the stage process ended")
        assert mlflow.MlflowClient().get_run(run.info.run_id).info.status == "KILLED"
        assert "interrupted: teacher (SIGTERM)" in sh(repo, "dvc", "queue", "logs", "long")
    finally:
        subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=repo, env=env(), capture_output=True)
        subprocess.run(["dvc", "exp", "remove", "--queue", "long"], cwd=repo, env=env(),
                       capture_output=True)
        subprocess.run(["dvc", "exp", "remove", "long"], cwd=repo, env=env(), capture_output=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2):
            return True
    except OSError:
        return False


def test_an_unreachable_store_is_one_line_in_seconds_before_any_output_is_touched(clean):
    repo = clean
    before = md5s(repo, lock_outs(repo, "distill"))
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    began = time.monotonic()
    proc = subprocess.run(["dvc", "exp", "run", "-S", "T=3"], cwd=repo, capture_output=True,
                          text=True, timeout=120, env={**env(), "MLFLOW_TRACKING_URI": url})
    took = time.monotonic() - began
    assert proc.returncode != 0
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [f"error: MLflow store {url}: unreachable ([Errno 111] Connection refused); "
                      "start the server or set MLFLOW_TRACKING_URI"], proc.stderr
    assert "Running stage 'check'" in proc.stdout and "Running stage 'distill'" not in proc.stdout
    assert took < 20, took  # the check itself: a 5 s connect timeout, refused at once here
    assert md5s(repo, before) == before


def test_a_store_locked_past_the_wait_stops_training_with_one_line(clean):
    """A neighbour holds SQLite's write lock (queued experiments share the file): the stage waits
    KD_STORE_WAIT seconds (MLflow's own busy timeout is 20 s), then one line, the outputs back;
    the run, which could not be closed while the lock was held, is closed by the next stage."""
    repo = clean
    began = time.time()
    set_params(repo, LONG)
    proc = start(repo, "dvc", "repro", KD_STORE_WAIT="5")
    run = wait_for(lambda: training(repo, began), 120, "the teacher trains")
    holder = sqlite3.connect(repo / "mlflow.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    locked = time.monotonic()
    try:
        proc.wait(timeout=120)
        gave_up = time.monotonic() - locked
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    out, err = output(proc)
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "database is locked" in errors[0] and "epochs unsent" in errors[0]
    assert "Traceback" not in err
    assert gave_up < 90, gave_up  # 20 s of MLflow's busy timeout per try, then give up
    outs = lock_outs(repo, "teacher")
    assert md5s(repo, outs) == outs
    assert not stage_processes(repo)
    sh(repo, "git", "checkout", "params.yaml")
    sh(repo, "dvc", "repro", "-f", "-s", "download")  # any stage closes the runs of the dead
    assert mlflow.MlflowClient().get_run(run.info.run_id).info.status == "KILLED"


def test_a_store_locked_for_a_while_loses_no_epoch(clean):
    """Locked for less than the wait: training goes on and every epoch reaches the run."""
    repo = clean
    began = time.time()
    set_params(repo, {"teacher.epochs": 40, "teacher.arch": "mlp:1024-1024"})
    proc = start(repo, "dvc", "repro", "teacher", KD_STORE_WAIT="120")
    run = wait_for(lambda: training(repo, began), 120, "the teacher trains")
    holder = sqlite3.connect(repo / "mlflow.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    time.sleep(25)  # past MLflow's own 20 s busy timeout: the rows are kept and sent later
    holder.execute("ROLLBACK")
    holder.close()
    assert proc.wait(timeout=600) == 0, output(proc)
    client = mlflow.MlflowClient()
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "epoch/val_acc")]
    assert sorted(steps) == list(range(1, 41))


def test_a_server_lost_mid_training_is_given_up_on_with_one_line(clean, tmp_path):
    repo = clean
    url = f"http://127.0.0.1:{free_port()}"
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port",
         url.rsplit(":", 1)[1], "--workers", "1", "--backend-store-uri",
         f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination", str(tmp_path / "art")],
        cwd=tmp_path, env={**env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: healthy(url), 120, "the server")
        set_params(repo, LONG)
        proc = start(repo, "dvc", "repro", MLFLOW_TRACKING_URI=url, KD_STORE_WAIT="5")
        client = mlflow.MlflowClient(url)

        def server_training():
            exp = client.get_experiment_by_name("knowledge-distillation")
            found = exp and client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")
            return next((r for r in found or [] if r.info.run_name == "teacher"
                         and any(k.startswith("epoch/") for k in r.data.metrics)), None)
        wait_for(server_training, 120, "the teacher trains")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    lost = time.monotonic()
    proc.wait(timeout=120)
    took = time.monotonic() - lost
    out, err = output(proc)
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and url in errors[0] and "epochs unsent" in errors[0], err
    assert "Traceback" not in err
    assert took < 30, took
    outs = lock_outs(repo, "teacher")
    assert md5s(repo, outs) == outs
    assert not stage_processes(repo)


def test_a_second_exp_run_in_the_workspace_stops_the_first_before_it_registers(clean):
    """The second `dvc exp run` writes its -S into params.yaml, then tries DVC's lock; the first,
    training its student, stops at the end of that epoch and registers nothing
    (kd/process/params_watch.py). The first now stops within DVC's few seconds of retrying the
    lock, so the second may then take it and run its own experiment: whatever is registered
    meanwhile is the second's (T = 5), never a student of the first's T = 3."""
    repo = clean
    began = time.time()
    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    before = {(v.name, v.version) for v in client.search_model_versions()}
    first = start(repo, "dvc", "exp", "run", "-S", "T=3", "-S", "distill.epochs=1500")
    run = wait_for(lambda: training(repo, began, "distill"), 180, "the first experiment's distill trains")
    # one epoch: if it does take the lock, it is over in seconds, not 1,500 epochs later
    subprocess.run(["dvc", "exp", "run", "-S", "T=5", "-S", "distill.epochs=1"], cwd=repo,
                   capture_output=True, text=True, timeout=300, env=env())
    assert first.wait(timeout=600) != 0
    out, err = output(first)
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert errors == ["error: params.yaml: changed while this stage ran (another `dvc exp run` in "
                      "this workspace?); nothing was registered: run it again when the other has "
                      "finished"], err
    assert client.get_run(run.info.run_id).info.status == "FAILED"
    registered = [v for v in client.search_model_versions() if (v.name, v.version) not in before]
    assert all(client.get_run(v.run_id).data.params["T"] == "5.0" for v in registered), registered
    assert "Running stage 'report'" not in out
    outs = lock_outs(repo, "distill")
    assert md5s(repo, outs) == outs


def test_a_hostile_experiment_name_runs_and_stays_out_of_the_report(clean):
    """The name is DVC's and MLflow's (the pipeline run's name); report.md holds none, so the same
    inputs give the same report whatever the experiment is called (tools.sweep's tables show
    names as code spans: tests/test_reporting.py)."""
    repo = clean
    name = "a`<h1>INJ<marquee>"
    sh(repo, "dvc", "exp", "run", "-n", name, "-S", "T=3")
    report = (repo / "report/report.md").read_text()
    assert "INJ" not in report and "<h1>" not in report
    assert name in sh(repo, "dvc", "exp", "ls", "--name-only")
