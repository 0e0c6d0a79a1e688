"""Stage 6: compare teacher, student baseline and distilled student; make the pipeline run.

Reads metrics/{teacher,student,distilled}.json, the three checkpoints (their test logits, for
per-class errors and agreement with the teacher), the test labels and plots/*.csv: the files
dvc.yaml declares, and nothing else, so its files are the same for the same inputs on any machine
and store. Writes report/report.md (tables), report/accuracy.png (test accuracy per epoch, the
selected epoch of each model marked) and report/cost.png (test accuracy against FLOPs per image),
and makes this execution's *pipeline run* in MLflow:
named after the DVC experiment, it holds the loss and its settings (T and alpha for kd), seed, dataset, preset
and the architectures as params, the three test accuracies and errors, the gain and the agreement
as metrics, and the ids of the stage runs whose models it reports (also when DVC skipped those
stages and their runs are older; found in the store by the checkpoints' bytes, they go to the run
alone). Comparing experiments: `python -m tools.compare`, `python -m tools.sweep`, MLflow's
compare view. Run: python -m stages.report
"""

from __future__ import annotations

from pathlib import Path

from kd import losses
from kd.data import splits
from kd.process import cli, files, params_watch
from kd.report import figures, tables
from kd.track import lineage, lookup, mlflow_runs
from kd.train import metrics

MODELS = (("teacher", "teacher"), ("student baseline", "student"), ("distilled student", "distilled"))
CHECKPOINT_KEYS = ("arch", "params", "class_names", "test_logits")  # what the report reads
RUN_OF = {"teacher": "teacher_run_id", "student": "student_run_id", "distilled": "distill_run_id"}


def main(argv: list[str] | None = None) -> None:
    ap = cli.parser(__doc__)
    cli.data_option(ap, "prepared dataset folder, for the test labels")
    cli.path_option(ap, "metrics-dir", "metrics", "folder of {teacher,student,distilled}.json")
    cli.path_option(ap, "models-dir", "model", "folder of the three checkpoints")
    cli.path_option(ap, "plots-dir", "plots", "folder of the per-epoch CSVs")
    cli.path_option(ap, "out", "report", "folder for report.md and accuracy.png")
    args = ap.parse_args(argv)
    p = cli.params_or_exit(args.params, losses.validate)

    with cli.friendly_errors():
        ds = splits.load(Path(args.data or f"data/{p.dataset}"))
        labels = ds.test.y
        finals, ckpts, histories = {}, {}, {}
        for label, name in MODELS:
            finals[name] = files.load_json(args.metrics_dir / f"{name}.json", "metrics file")
            ckpts[name] = files.load_torch(args.models_dir / f"{name}.pt", CHECKPOINT_KEYS,
                                           "model checkpoint")
            histories[label] = tables.read_history(args.plots_dir / f"{name}.csv")
        teacher_logits = ckpts["teacher"]["test_logits"]
        # The runs that wrote these very checkpoints (found by their bytes: a killed or failed
        # run never wrote one), also when DVC skipped their stages this time.
        run_ids = {RUN_OF[name]: lookup.run_of(args.models_dir / f"{name}.pt")
                   for _, name in MODELS}
        rows = [{"name": label, "arch": ckpts[name]["arch"], "params": ckpts[name]["params"],
                 **finals[name], "agreement": None if name == "teacher"
                 else metrics.agreement(ckpts[name]["test_logits"], teacher_logits)}
                for label, name in MODELS]
        per_class = {label: metrics.per_class_errors(ckpts[name]["test_logits"], labels,
                                                     len(ckpts[name]["class_names"]))
                     for label, name in MODELS}
        headline = tables.headline(finals, rows[1]["agreement"], rows[2]["agreement"])
        md = tables.report_markdown(p, losses.describe(p), rows, headline, finals["distilled"],
                                    ckpts["teacher"]["class_names"], per_class)
        png = figures.accuracy_png(
            histories, {label: finals[name]["best_epoch"] for label, name in MODELS},
            f"{p.dataset}: test accuracy per epoch (loss {losses.describe(p)}, seed {p.seed})")
        cost_png = figures.cost_png(rows, f"{p.dataset}: accuracy against compute")
        experiment = lineage.experiment_name()
        params = {"experiment": experiment, "dataset": p.dataset, "preset": p.preset,
                  "seed": p.seed, **losses.settings(p),
                  "teacher_arch": ckpts["teacher"]["arch"],
                  "student_arch": ckpts["student"]["arch"]}
        params_watch.unchanged()
        with mlflow_runs.stage_run("report", p.dataset, params, tags=run_ids, run_name=experiment,
                                   run_type="pipeline") as run:
            run.log_summary(headline)
            run.log_file("report.md", md)
            run.log_file("accuracy.png", png)
            run.log_file("cost.png", cost_png)
            files.write_files({args.out / "report.md": md, args.out / "accuracy.png": png,
                               args.out / "cost.png": cost_png})
    print(md)


if __name__ == "__main__":
    main()
