"""Each stage's main() on digits in a temp folder, recorded in a temporary MLflow store."""

import csv
import hashlib
import json
import subprocess
import sys

import mlflow
import mlflow.pytorch
import pytest
import torch

from kd.train import steps
from tests.conftest import (
    STAGES,
    distill_with,
    hash_tree,
    metrics_file,
    project,
    run_stage,
    tiny_params,
    write_params,
)

# What metrics/<model>.json holds: the compared values only (no timings, no per-class lists).
SAME_KEYS = {"test_acc", "test_errors", "test_ece", "val_acc", "best_epoch", "params",
             "flops_per_image", "size_bytes"}
TRAINING_RUNS = {"teacher": "teacher", "student": "student", "distill": "distilled"}
# The settings every training run logs under the same names, so runs line up in the compare view.
SHARED_PARAMS = {"dataset", "preset", "seed", "arch", "input_dropout", "dropout", "max_norm",
                 "epochs", "batch_size", "lr", "momentum", "weight_decay", "shift", "flip",
                 "grad_clip"}


def runs_by_stage(uri):
    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name("knowledge-distillation")
    runs = mlflow.search_runs([exp.experiment_id], output_format="list")
    out = {}
    for r in runs:
        out.setdefault(r.info.run_name, []).append(r)
    return exp, out


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Run all six stages once in order; the tests below inspect what they left."""
    with project(tmp_path_factory, "pipeline", DVC_EXP_NAME="smoke-exp") as (folder, uri):
        for name in STAGES:
            run_stage(name)
        yield folder, uri


def test_every_output_is_written(pipeline):
    folder, _ = pipeline
    for rel in ("data/digits/train.pt", "data/digits/val.pt", "data/digits/test.pt",
                "data/digits/meta.json", "model/teacher.pt", "model/student.pt",
                "model/soft_targets.pt", "model/distilled.pt", "metrics/teacher.json",
                "metrics/student.json", "metrics/distilled.json", "plots/teacher.csv",
                "plots/student.csv", "plots/distilled.csv", "report/report.md",
                "report/accuracy.png"):
        assert (folder / rel).is_file(), rel
    assert (folder / "report/accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_soft_targets_record_the_teacher_and_the_split_they_came_from(pipeline):
    folder, _ = pipeline
    soft = torch.load(folder / "model/soft_targets.pt", weights_only=True)
    teacher = hashlib.sha256((folder / "model/teacher.pt").read_bytes()).hexdigest()
    assert soft["teacher_sha256"] == teacher
    assert soft["split"] == {"dataset": "digits", "split_seed": 0, "val_fraction": 0.1}


def _rerun_weights(folder, name):
    """The checkpoint's weights rebuilt and run on the stored test images, outside the stage's
    own scoring: the logits (N, classes) and the labels."""
    test = torch.load(folder / "data/digits/test.pt")
    meta = json.loads((folder / "data/digits/meta.json").read_text())
    model, _ = steps.load_checkpoint(folder / f"model/{name}.pt", torch.device("cpu"))
    mean, std = torch.tensor(meta["mean"]).view(1, -1, 1, 1), torch.tensor(meta["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        return model((test["x"].float() / 255 - mean) / std), test["y"]


def _ece_by_hand(logits, labels, bins=15):
    """Guo et al. (2017): sum over equal-width confidence bins of |accuracy - confidence| * share."""
    probs = torch.softmax(logits.double(), 1)
    conf, pred = probs.max(1)
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = [i for i in range(len(conf)) if lo < conf[i] <= hi or (b == 0 and conf[i] == 0)]
        if inside:
            acc = sum(int(pred[i] == labels[i]) for i in inside) / len(inside)
            total += abs(acc - sum(float(conf[i]) for i in inside) / len(inside)) * len(inside)
    return total / len(conf)


def test_metrics_files_hold_what_the_saved_weights_score(pipeline):
    """Recomputed from first principles: the checkpoint's weights run afresh on the test images
    (not the logits the stage saved), errors, ECE and per-class errors counted by hand."""
    folder, uri = pipeline
    _, runs = runs_by_stage(uri)
    teacher_pred = _rerun_weights(folder, "teacher")[0].argmax(1)
    for stage, name in TRAINING_RUNS.items():
        m = metrics_file(folder, name)
        extra = {"agreement", "transfer_images", "bias_correction"} if name == "distilled" else set()
        assert set(m) == SAME_KEYS | extra
        logits, labels = _rerun_weights(folder, name)
        pred = logits.argmax(1)
        assert m["test_errors"] == sum(int(p != y) for p, y in zip(pred, labels, strict=True))
        assert m["test_acc"] == pytest.approx(1 - m["test_errors"] / len(labels))
        assert m["test_ece"] == pytest.approx(_ece_by_hand(logits, labels), abs=1e-4)
        per_class = [sum(int(p != y) for p, y in zip(pred, labels, strict=True) if y == c)
                     for c in range(10)]
        ran = runs[stage][0].data.metrics
        assert [ran[f"test_errors_class_{c}"] for c in range(10)] == per_class
        if name == "distilled":
            assert m["agreement"] == pytest.approx(float((pred == teacher_pred).float().mean()))


def test_each_model_is_its_best_validation_epoch(pipeline):
    """best_epoch is the history's first epoch of highest validation accuracy, and the metrics
    file's scores are that epoch's row of plots/<name>.csv."""
    folder, _ = pipeline
    for name in ("teacher", "student", "distilled"):
        rows = [{k: float(v) for k, v in r.items()}
                for r in csv.DictReader(open(folder / f"plots/{name}.csv"))]
        best = max(rows, key=lambda r: (r["val_acc"], -r["epoch"]))
        m = metrics_file(folder, name)
        assert m["best_epoch"] == best["epoch"]
        assert (m["val_acc"], m["test_acc"], m["test_errors"]) == pytest.approx(
            (best["val_acc"], best["test_acc"], best["test_errors"]))


def test_one_mlflow_run_per_stage_with_shared_params_and_no_empty_tags(pipeline):
    folder, uri = pipeline
    exp, runs = runs_by_stage(uri)
    assert sorted(runs) == sorted(["smoke-exp", *STAGES[:-1]])
    assert all(len(r) == 1 for r in runs.values())
    for (run,) in runs.values():
        assert run.info.status == "FINISHED"
        assert all(v != "" for v in run.data.tags.values()), run.data.tags
        assert run.data.tags["dataset"] == "digits" and run.data.tags["experiment"] == "smoke-exp"
        assert run.data.tags["dvc.exp_name"] == "smoke-exp"
    params = {s: runs[s][0].data.params for s in TRAINING_RUNS}
    for stage, ps in params.items():
        assert SHARED_PARAMS <= set(ps), stage
    # Effective values: `auto` resolved, the distill run's training knobs are distill.*.
    assert params["teacher"]["arch"] == "mlp:256-256" and params["student"]["arch"] == "mlp:32"
    assert params["distill"]["arch"] == "mlp:32" and params["teacher"]["epochs"] == "2"
    assert params["distill"]["T"] == "4.0" and params["distill"]["omit_classes"] == "[]"
    teacher, distill = runs["teacher"][0], runs["distill"][0]
    # Lineage: the distilled student names the run that trained its teacher.
    assert distill.data.tags["teacher_run_id"] == teacher.info.run_id
    assert exp.artifact_location.startswith("file:///")


def test_mlflow_shows_the_metrics_files_and_keeps_the_history_apart(pipeline):
    folder, uri = pipeline
    _, runs = runs_by_stage(uri)
    client = mlflow.MlflowClient(uri)
    for stage, name in TRAINING_RUNS.items():
        run = runs[stage][0]
        summary = metrics_file(folder, name)
        # What the runs table and compare view show (the latest value) is the metrics file.
        assert {k: run.data.metrics[k] for k in summary} == pytest.approx(summary)
        for key in summary:
            assert len(client.get_metric_history(run.info.run_id, key)) == 1, key
        history = [k for k in run.data.metrics if k.startswith("epoch/")]
        assert {"epoch/test_acc", "epoch/val_acc", "epoch/train_loss", "epoch/lr"} <= set(history)
        for key in history:  # one point per epoch, none at step 0
            assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == [1, 2]


def test_pipeline_run_holds_the_headline_and_names_the_stage_runs(pipeline):
    folder, uri = pipeline
    exp, runs = runs_by_stage(uri)
    # The README's filter lists exactly the pipeline runs.
    (run,) = mlflow.search_runs([exp.experiment_id], filter_string="tags.run_type = 'pipeline'",
                                output_format="list")
    assert run.info.run_name == "smoke-exp" and run.data.tags["dvc.stage"] == "report"
    numerics = {"numerics", "cpu_capability", "mkl_cbwr", "onednn_max_cpu_isa",
                "aten_cpu_capability", "cublas_workspace_config", "torch_version", "cpu",
                "omp_wait_policy"}
    assert {k: v for k, v in run.data.params.items() if k not in numerics} == {
        "experiment": "smoke-exp", "dataset": "digits", "preset": "none", "T": "4.0",
        "alpha": "0.9", "seed": "0", "teacher_arch": "mlp:256-256", "student_arch": "mlp:32",
        "loss": "kd"}
    assert set(run.data.params) >= numerics and run.data.params["numerics"] == "portable"
    for name in ("teacher", "student", "distilled"):
        m = metrics_file(folder, name)
        assert run.data.metrics[f"{name}_test_acc"] == pytest.approx(m["test_acc"])
        assert run.data.metrics[f"{name}_test_errors"] == m["test_errors"]
    assert run.data.metrics["distilled_agreement"] == pytest.approx(
        metrics_file(folder, "distilled")["agreement"])
    assert run.data.metrics["gain"] == pytest.approx(
        metrics_file(folder, "distilled")["test_acc"] - metrics_file(folder, "student")["test_acc"])
    for tag, stage in (("teacher_run_id", "teacher"), ("student_run_id", "student"),
                       ("distill_run_id", "distill")):
        assert run.data.tags[tag] == runs[stage][0].info.run_id


def test_logged_models_take_stored_images_and_reproduce_the_test_accuracy(pipeline):
    folder, uri = pipeline
    exp, runs = runs_by_stage(uri)
    test = torch.load(folder / "data/digits/test.pt")
    models = mlflow.search_logged_models(experiment_ids=[exp.experiment_id], output_format="list")
    by_run = {m.source_run_id: m for m in models}
    for stage, name in TRAINING_RUNS.items():
        logged = by_run[runs[stage][0].info.run_id]
        assert logged.name == name
        info = mlflow.models.get_model_info(logged.model_uri)
        (spec,) = info.signature.inputs.inputs
        assert spec.type.name == "float64" and tuple(spec.shape) == (-1, 1, 8, 8)  # serving.Servable
        model = mlflow.pytorch.load_model(logged.model_uri)
        with torch.no_grad():
            errors = int((model(test["x"]).argmax(1) != test["y"]).sum())
        assert errors == metrics_file(folder, name)["test_errors"]
        # The model's page shows the same summary as the run.
        assert {m.key: m.value for m in logged.metrics}["test_errors"] == errors


# In a fresh interpreter that cannot import this checkout (-I: no PYTHONPATH, no working folder
# on sys.path, run elsewhere): the logged model brings the code it needs.
LOAD_ELSEWHERE = """import sys, mlflow, mlflow.pytorch, torch
mlflow.set_tracking_uri(sys.argv[1])
assert "kd" not in sys.modules
model = mlflow.pytorch.load_model(sys.argv[2])
test = torch.load(sys.argv[3])
print(int((model(test["x"]).argmax(1) != test["y"]).sum()))
"""


def test_a_logged_model_loads_anywhere_in_pickle_form_with_its_code(pipeline, tmp_path):
    folder, uri = pipeline
    exp, runs = runs_by_stage(uri)
    (logged,) = mlflow.search_logged_models(
        experiment_ids=[exp.experiment_id], output_format="list",
        filter_string=f"source_run_id = '{runs['teacher'][0].info.run_id}'")
    flavors = mlflow.models.get_model_info(logged.model_uri).flavors
    assert "pickle_module_name" in flavors["python_function"]  # not torch.export's pt2
    assert flavors["pytorch"]["code"] == "code"
    proc = subprocess.run([sys.executable, "-I", "-c", LOAD_ELSEWHERE, uri, logged.model_uri,
                           str(folder / "data/digits/test.pt")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.split()[-1]) == metrics_file(folder, "teacher")["test_errors"]


def test_distilled_student_is_a_registered_model_version(pipeline):
    folder, uri = pipeline
    _, runs = runs_by_stage(uri)
    client = mlflow.MlflowClient(uri)
    (version,) = client.search_model_versions("name = 'distilled-student'")
    assert version.run_id == runs["distill"][0].info.run_id
    assert version.tags["T"] == "4.0" and version.tags["alpha"] == "0.9"
    # Rounded to 6 places for the registry page (0.9067, not 0.9067000000000001).
    assert version.tags["test_acc"] == str(round(metrics_file(folder, "distilled")["test_acc"], 6))


def test_report_states_the_metrics_files_numbers(pipeline):
    folder, _ = pipeline
    md = (folder / "report/report.md").read_text()
    for label, name in (("teacher", "teacher"), ("student baseline", "student"),
                        ("distilled student", "distilled")):
        m = metrics_file(folder, name)
        assert f"| {label} |" in md and f"| {100 * m['test_acc']:.2f}% | {m['test_errors']} |" in md
    assert "smoke-exp" not in md  # the experiment's name is its MLflow run's, not a file's


def test_same_params_and_seed_give_the_same_metrics(workdir, mlflow_store):
    run_stage("download")
    results = []
    for out in ("a", "b"):
        run_stage("teacher", "--model", f"{out}.pt", "--metrics", f"{out}.json",
                  "--plots", f"{out}.csv")
        results.append(json.loads((workdir / f"{out}.json").read_text()))
    assert results[0] == results[1]


def test_divergence_stops_the_stage_and_writes_no_model(workdir, mlflow_store, capsys):
    raw = tiny_params()
    raw["teacher"]["lr"] = 1e6
    write_params(workdir, raw)
    run_stage("download")
    with pytest.raises(SystemExit) as exc:
        run_stage("teacher")
    assert exc.value.code == 1
    assert "training loss became nan" in capsys.readouterr().err.lower()
    assert not (workdir / "model").exists() and not (workdir / "metrics").exists()


def test_a_diverged_distillation_names_its_loss_and_settings(workdir, mlflow_store, capsys):
    raw = tiny_params()
    raw["distill"].update(loss="dkd", lr=1e6)
    write_params(workdir, raw)
    for name in ("download", "teacher", "soft_targets"):
        run_stage(name)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_stage("distill")
    err = capsys.readouterr().err
    assert exc.value.code == 1 and err.count("\n") == 1
    assert "training loss became nan" in err and \
        "under loss dkd (ce 1, alpha 1, beta 8, T 4, warmup 0.0833)" in err
    assert not (workdir / "model/distilled.pt").exists() and not (workdir / "metrics/distilled.json").exists()


def test_online_teacher_when_distillation_augments(workdir, mlflow_store):
    distill_with(workdir, shift=1)
    _, runs = runs_by_stage(mlflow_store)
    assert runs["distill"][0].data.tags["soft_targets"] == "online"


@pytest.mark.parametrize("loss, own", [
    ("kd", {"T": "4.0", "alpha": "0.9"}),
    ("dkd", {"dkd_ce": "1.0", "dkd_alpha": "1.0", "dkd_beta": "8.0", "dkd_T": "4.0",
             "dkd_warmup": "0.0833"}),
    ("ls", {"ls_ce": "1.0", "ls_kd": "9.0", "ls_T": "2.0"}),
    ("dist", {"dist_beta": "1.0", "dist_gamma": "1.0", "dist_tau": "1.0"}),
])
def test_each_loss_trains_and_is_recorded_with_its_own_settings_only(workdir, mlflow_store, loss, own):
    distill_with(workdir, loss=loss)
    run_stage("student")
    run_stage("report")
    _, runs = runs_by_stage(mlflow_store)
    distill, (pipeline_run,) = runs["distill"][0], [r for name, rs in runs.items() for r in rs
                                                    if r.data.tags.get("run_type") == "pipeline"]
    # every loss's knobs; those of the other losses (kd's T and alpha too) are absent, not shown
    knobs = {"T", "alpha"} | {k for k in tiny_params()["distill"] if k.startswith(("dkd_", "ls_", "dist_"))}
    for run in (distill, pipeline_run):
        assert run.data.params["loss"] == loss
        assert {k: v for k, v in run.data.params.items() if k in knobs} == own
    m = metrics_file(workdir, "distilled")
    assert 0.5 < m["test_acc"] <= 1.0  # digits, 2 epochs: a chance-level student is 0.1
    assert f"# Distillation report: digits, {loss} (" in (workdir / "report/report.md").read_text()


def test_the_report_reads_only_what_dvc_declares(workdir, mlflow_store, monkeypatch):
    """report/* depend on the declared inputs alone: the same files come out with a store full of
    other experiments' runs, under another experiment name, and with tracking off."""
    distill_with(workdir)
    run_stage("student")
    run_stage("report")
    first = hash_tree(workdir / "report")
    distill_with(workdir, loss="dist")  # other runs in the store: another student, another loss
    distill_with(workdir)  # back to the first inputs (the same bytes: same params and seed)
    monkeypatch.setenv("DVC_EXP_NAME", "another-name")
    run_stage("report")
    assert hash_tree(workdir / "report") == first
    monkeypatch.setenv("KD_TRACKING", "off")
    run_stage("report")
    assert hash_tree(workdir / "report") == first
