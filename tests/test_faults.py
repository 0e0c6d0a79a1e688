"""Faults in a stage's inputs, outputs, MLflow store and process, through the real stages on
digits: each ends with one `error:` line naming the file or key, a non-zero exit, and no output
file changed or appeared; a killed stage leaves nothing behind once the next stage has run.
(Broken raw and prepared data: tests/test_faults_data.py.)"""

import errno
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import mlflow
import pytest
import torch
import yaml

from kd.track import lookup as lookup
from stages import check, distill, report, soft_targets, teacher
from tests.conftest import ROOT, fails_cleanly, run_stage, tiny_params, write_params

STAGES = ("download", "teacher", "student", "soft_targets", "distill", "report")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Every stage run once: a project folder and, beside it, its MLflow store."""
    base = tmp_path_factory.mktemp("built")
    mp = pytest.MonkeyPatch()
    (base / "project").mkdir()
    mp.chdir(base / "project")
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{base / 'store' / 'mlflow.db'}")
    mp.setenv("DVC_ROOT", str(base / "store"))
    mp.delenv("KD_TRACKING", raising=False)
    write_params(base / "project", tiny_params())
    for name in STAGES:
        run_stage(name)
    mp.undo()
    return base


@pytest.fixture
def project(built, tmp_path, monkeypatch):
    """A copy of the built project and its store; the working directory is the project."""
    shutil.copytree(built, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path / "project")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "store"))
    monkeypatch.delenv("KD_TRACKING", raising=False)
    return tmp_path / "project"


def runs(project, stage=None):
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    exp = mlflow.get_experiment_by_name("knowledge-distillation")
    found = mlflow.search_runs([exp.experiment_id], output_format="list")
    return [r for r in found if stage is None or r.data.tags.get("dvc.stage") == stage]


def set_params(project, **changes):
    raw = tiny_params()
    for dotted, value in changes.items():
        *path, last = dotted.split("__")
        node = raw
        for key in path:
            node = node[key]
        node[last] = value
    write_params(project, raw)


# --- each fault: break something, name the stage that must refuse it and what it must say -----


class Evil:
    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path("payload-ran"),))


def truncated_checkpoint(project, monkeypatch, request):
    path = project / "model/teacher.pt"
    path.write_bytes(path.read_bytes()[:1000])
    return soft_targets, "model/teacher.pt: not a readable model checkpoint (truncated or corrupt"


def zero_byte_checkpoint(project, monkeypatch, request):
    (project / "model/teacher.pt").write_bytes(b"")
    return soft_targets, "model/teacher.pt: not a readable model checkpoint"


def checkpoint_where_soft_targets_belong(project, monkeypatch, request):
    shutil.copy(project / "model/teacher.pt", project / "model/soft_targets.pt")
    return distill, "model/soft_targets.pt: not a soft-targets file (no train, val, test, teacher_sha256"


def soft_targets_where_a_checkpoint_belongs(project, monkeypatch, request):
    shutil.copy(project / "model/soft_targets.pt", project / "model/teacher.pt")
    return soft_targets, "model/teacher.pt: not a model checkpoint (no arch, in_shape"


def soft_targets_of_another_teacher(project, monkeypatch, request):
    # A valid teacher checkpoint, but not the one that computed the cached logits.
    ckpt = torch.load(project / "model/teacher.pt", weights_only=True)
    next(iter(ckpt["state_dict"].values())).add_(1.0)
    torch.save(ckpt, project / "model/teacher.pt")
    return distill, "model/soft_targets.pt: soft targets were made by another teacher checkpoint"


def soft_targets_of_another_split(project, monkeypatch, request):
    # The data re-cut with another split_seed: same sizes, other rows in train and val.
    set_params(project, data__split_seed=1)
    run_stage("download")
    set_params(project)
    return distill, "model/soft_targets.pt: soft targets were computed on another split"


def pickle_payload_despite_env(project, monkeypatch, request):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    torch.save({"arch": Evil()}, project / "model/teacher.pt")
    return soft_targets, "model/teacher.pt: not a readable model checkpoint"


def corrupt_metrics_file(project, monkeypatch, request):
    (project / "metrics/teacher.json").write_text('{"test_acc": 0.9,')
    return report, "metrics/teacher.json: not a readable metrics file"


def mangled_history_csv(project, monkeypatch, request):
    (project / "plots/student.csv").write_text("epoch,test_acc\n1,high\n")
    return report, "plots/student.csv: not a per-epoch history CSV"


def model_folder_is_a_file(project, monkeypatch, request):
    shutil.rmtree(project / "model")
    (project / "model").write_text("not a folder")
    return teacher, "model/teacher.pt: cannot write it (a file is where a folder should be: model)"


def metrics_folder_is_a_file(project, monkeypatch, request):
    # The checkpoint could be written, but a stage's outputs change together or not at all.
    shutil.rmtree(project / "metrics")
    (project / "metrics").write_text("not a folder")
    return teacher, "metrics/teacher.json: cannot write it (a file is where a folder should be"


def disk_full_on_the_metrics_file(project, monkeypatch, request):
    write_bytes = pathlib.Path.write_bytes

    def full(self, data):
        if self.name.startswith(".teacher.json."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return write_bytes(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", full)
    return teacher, "metrics/teacher.json: cannot write it (No space left on device"


def read_only_mlflow_store(project, monkeypatch, request):
    # Root writes through file modes (as in CI), so the database is made read-only by a bind mount.
    db = str(project.parent / "store" / "mlflow.db")
    if subprocess.run(["mount", "--bind", db, db], capture_output=True).returncode != 0:
        pytest.skip("needs a read-only bind mount (mount as root)")
    # lazy: MLflow's engine, cached in this process, keeps the file open
    request.addfinalizer(lambda: subprocess.run(["umount", "--lazy", db], check=True))
    subprocess.run(["mount", "-o", "remount,ro,bind", db, db], check=True)
    return teacher, "mlflow.db: not writable; make it writable or set MLFLOW_TRACKING_URI"


def record_in_dvc_lock(project, monkeypatch):
    """A dvc.lock recording the outputs as they are, as `dvc repro` leaves it, and the next stage
    run by DVC (which sets DVC_STAGE)."""
    monkeypatch.setenv("DVC_STAGE", "next")
    from kd.process.recorded_hashes import manifest, manifest_md5, md5_file
    out = lambda path, md5: {"path": path, "hash": "md5", "md5": md5}  # noqa: E731
    lock = {"schema": "2.0", "stages": {
        "download": {"outs": [out("data/digits", manifest_md5(manifest(project / "data/digits")))]},
        "teacher": {"outs": [out("model/teacher.pt", md5_file(project / "model/teacher.pt"))]},
        "soft_targets": {"outs": [out("model/soft_targets.pt",
                                      md5_file(project / "model/soft_targets.pt"))]}}}
    (project / "dvc.lock").write_text(yaml.safe_dump(lock))


def flip_bytes(path, count):
    """Invert `count` bytes in the middle of a file: it still unpickles, with other numbers."""
    data = bytearray(path.read_bytes())
    start = len(data) // 2 - count // 2
    data[start:start + count] = bytes(b ^ 0xFF for b in data[start:start + count])
    path.write_bytes(bytes(data))


def corrupt_teacher_dvc_recorded(project, monkeypatch, request):
    record_in_dvc_lock(project, monkeypatch)
    flip_bytes(project / "model/teacher.pt", 2000)
    return soft_targets, ("model/teacher.pt: its content does not match the md5 dvc.lock records "
                          "for it (corrupt, or changed outside DVC); put it back with `dvc "
                          "checkout -f model/teacher.pt` or rerun its stage with `dvc repro -f "
                          "-s teacher`")


def corrupt_soft_targets_dvc_recorded(project, monkeypatch, request):
    record_in_dvc_lock(project, monkeypatch)
    flip_bytes(project / "model/soft_targets.pt", 3000)
    return distill, "model/soft_targets.pt: its content does not match the md5 dvc.lock records"


def corrupt_split_dvc_recorded(project, monkeypatch, request):
    record_in_dvc_lock(project, monkeypatch)
    flip_bytes(project / "data/digits/train.pt", 100)
    return teacher, ("data/digits: its content does not match the md5 dvc.lock records for it "
                     "(corrupt, or changed outside DVC); put it back with `dvc checkout -f "
                     "data/digits` or rerun its stage with `dvc repro -f -s download`")


def labels_beyond_the_class_count(project, monkeypatch, request):
    split = torch.load(project / "data/digits/val.pt", weights_only=True)
    split["y"][0] = 10  # digits has classes 0..9
    torch.save(split, project / "data/digits/val.pt")
    return teacher, ("data/digits/val.pt: labels run from 0 to 10, but meta.json names 10 classes "
                     "(0 to 9); rerun the download stage")


FAULTS = [corrupt_teacher_dvc_recorded, corrupt_soft_targets_dvc_recorded,
          corrupt_split_dvc_recorded, labels_beyond_the_class_count,
          truncated_checkpoint, zero_byte_checkpoint, checkpoint_where_soft_targets_belong,
          soft_targets_where_a_checkpoint_belongs, soft_targets_of_another_teacher,
          soft_targets_of_another_split, pickle_payload_despite_env,
          corrupt_metrics_file, mangled_history_csv, model_folder_is_a_file,
          metrics_folder_is_a_file, disk_full_on_the_metrics_file, read_only_mlflow_store]


@pytest.mark.parametrize("fault", FAULTS, ids=[f.__name__ for f in FAULTS])
def test_fault_is_one_line_and_changes_no_output(fault, project, monkeypatch, request, capsys):
    stage, message = fault(project, monkeypatch, request)
    msg = fails_cleanly(stage.main, [], project, capsys)
    assert message in msg
    assert not (project / "payload-ran").exists()
    if fault is not read_only_mlflow_store:  # the run that did start ended FAILED, not RUNNING
        assert not [r for r in runs(project) if r.info.status == "RUNNING"]


PARAM_FAULTS = [
    ({"teacher__arch": "cnn:8-8-8-8"}, teacher,
     "params.yaml: teacher.arch cnn:8-8-8-8 has 4 pooling blocks, but digits 8x8 images allow"),
    ({"T": float("inf")}, distill, "params.yaml: T must be a number in [0.1, 100] (got inf)"),
    ({"distill__lr": float("nan")}, check, "params.yaml: distill.lr must be a finite number > 0"),
    ({"Temp": 8}, check, "params.yaml: Temp is not a known key; allowed: dataset, preset"),
]


@pytest.mark.parametrize("changes,stage,message", PARAM_FAULTS,
                         ids=["impossible-arch", "T-inf", "lr-nan", "misspelt-top-key"])
def test_bad_params_exit_2_and_change_nothing(changes, stage, message, project, capsys):
    set_params(project, **changes)
    assert message in fails_cleanly(stage.main, [], project, capsys, code=2)


def test_identical_runs_write_identical_files_and_the_run_is_found_by_them(project):
    outputs = [project / p for p in ("model/teacher.pt", "metrics/teacher.json",
                                     "plots/teacher.csv")]
    before = [p.read_bytes() for p in outputs]
    teacher.main([])
    assert [p.read_bytes() for p in outputs] == before  # DVC sees no change: nothing downstream
    newest = max(runs(project, "teacher"), key=lambda r: r.info.start_time)
    assert lookup.run_of(outputs[0]) == newest.info.run_id
    assert "mlflow_run_id" not in torch.load(outputs[0], weights_only=True)


def test_kill_9_mid_training_is_cleaned_up_by_the_next_stage_without_touching_live_runs(
        project, monkeypatch):
    set_params(project, teacher__epochs=100_000)
    staging = project.parent / "store" / ".tmp"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "stages.teacher"], cwd=project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("teacher epoch 1/"):
                break
        else:
            pytest.fail(f"the teacher stage never reported an epoch (exit {proc.wait()})")
        (live,) = [r for r in runs(project, "teacher") if r.info.status == "RUNNING"]
        set_params(project)
        run_stage("student")  # another stage starting while the teacher lives: hands off
        assert mlflow.get_run(live.info.run_id).info.status == "RUNNING"
        assert len(list(staging.glob("mlflow-*"))) == 1  # the live teacher's staging folder stays
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    teacher.main([])
    assert mlflow.get_run(live.info.run_id).info.status == "KILLED"
    assert not [r for r in runs(project) if r.info.status == "RUNNING"]
    client = mlflow.MlflowClient()
    assert not [m for m in client.search_logged_models(
        [live.info.experiment_id], filter_string=f"source_run_id = '{live.info.run_id}'")
        if str(m.status) == "PENDING"]
    # valid outputs, no temporaries, no staging folder (the killed one's went, the rerun's too)
    assert torch.load(project / "model/teacher.pt", weights_only=True)["arch"] == "mlp:256-256"
    assert not list(project.rglob("*.tmp")) and not list(project.rglob(".*.tmp*"))
    assert not list(staging.glob("mlflow-*"))


def test_inputs_that_match_dvc_lock_are_used(project, monkeypatch):
    """The check refuses only a mismatch: recorded and intact, every stage reads its inputs."""
    record_in_dvc_lock(project, monkeypatch)
    for name in ("teacher", "soft_targets", "distill"):
        run_stage(name)
