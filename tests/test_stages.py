"""Each stage's main() on digits in a temp folder, recorded in a temporary MLflow store."""

import importlib
import json

import mlflow
import pytest
import torch

from tests.conftest import tiny_params, write_params

STAGES = ("download", "teacher", "student", "soft_targets", "distill", "report")
SAME_KEYS = {"test_acc", "test_errors", "test_loss", "test_ece", "val_acc", "val_loss",
             "val_errors", "params",
             "best_epoch", "train_seconds", "samples_per_s", "test_errors_per_class"}


def run_stage(name, *argv):
    importlib.import_module(f"stages.{name}").main(list(argv))


def distill_with(workdir, **distill):
    """Write tiny params with these `distill.*` values, then run the stages up to distill."""
    raw = tiny_params()
    raw["distill"].update(distill)
    write_params(workdir, raw)
    for name in ("download", "teacher", "soft_targets", "distill"):
        run_stage(name)


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
    folder = tmp_path_factory.mktemp("pipeline")
    mp = pytest.MonkeyPatch()
    mp.chdir(folder)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mp.setenv("DVC_EXP_NAME", "smoke-exp")
    mp.delenv("KD_TRACKING", raising=False)
    write_params(folder, tiny_params())
    for name in STAGES:
        run_stage(name)
    yield folder, uri
    mp.undo()


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


def test_metrics_files_share_keys(pipeline):
    folder, _ = pipeline
    m = {n: json.loads((folder / f"metrics/{n}.json").read_text())
         for n in ("teacher", "student", "distilled")}
    assert set(m["teacher"]) == set(m["student"]) == SAME_KEYS
    assert set(m["distilled"]) == SAME_KEYS | {"agreement", "transfer_images", "bias_correction"}
    for v in m.values():
        assert 0 <= v["test_acc"] <= 1 and v["test_errors"] == sum(v["test_errors_per_class"])
        assert v["test_errors"] == round((1 - v["test_acc"]) * 297)


def test_one_mlflow_run_per_stage_with_tags_params_and_metrics(pipeline):
    _, uri = pipeline
    exp, runs = runs_by_stage(uri)
    assert sorted(runs) == sorted(STAGES) and all(len(r) == 1 for r in runs.values())
    for name, (run,) in runs.items():
        assert run.info.status == "FINISHED"
        assert run.data.tags["dvc.stage"] == name and run.data.tags["dataset"] == "digits"
        assert run.data.tags["dvc.exp_name"] == "smoke-exp"
    teacher = runs["teacher"][0]
    assert teacher.data.params["teacher.epochs"] == "2" and teacher.data.params["seed"] == "0"
    distill = runs["distill"][0]
    assert distill.data.params["T"] == "4.0" and distill.data.params["distill.lr"] == "0.05"
    # Lineage: the distilled student names the run that trained its teacher.
    assert distill.data.tags["teacher_run_id"] == teacher.info.run_id
    assert exp.artifact_location.startswith("file:///")


def test_per_epoch_metrics_have_steps_and_models_are_logged(pipeline):
    _, uri = pipeline
    exp, runs = runs_by_stage(uri)
    client = mlflow.MlflowClient(uri)
    for name in ("teacher", "student", "distill"):
        run = runs[name][0]
        history = client.get_metric_history(run.info.run_id, "val_acc")
        assert sorted(h.step for h in history) == [0, 1, 2]  # epochs 1, 2 and the final value
        assert {"test_acc", "train_loss", "epoch_seconds", "samples_per_s"} <= set(run.data.metrics)
    models = mlflow.search_logged_models(experiment_ids=[exp.experiment_id], output_format="list")
    assert sorted(m.source_run_id for m in models) == sorted(
        runs[n][0].info.run_id for n in ("teacher", "student", "distill"))
    loaded = mlflow.pytorch.load_model(models[0].model_uri)
    assert loaded(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_report_table_names_the_three_models(pipeline):
    folder, _ = pipeline
    md = (folder / "report/report.md").read_text()
    for name in ("teacher", "student baseline", "distilled student", "agreement with teacher"):
        assert name in md


def test_same_params_and_seed_give_the_same_metrics(workdir, mlflow_store):
    run_stage("download")
    results = []
    for out in ("a", "b"):
        run_stage("teacher", "--model", f"{out}.pt", "--metrics", f"{out}.json",
                  "--plots", f"{out}.csv")
        m = json.loads((workdir / f"{out}.json").read_text())
        results.append({k: v for k, v in m.items() if k not in ("train_seconds", "samples_per_s")})
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


def test_online_teacher_when_distillation_augments(workdir, mlflow_store):
    distill_with(workdir, shift=1)
    _, runs = runs_by_stage(mlflow_store)
    assert runs["distill"][0].data.tags["soft_targets"] == "online"
