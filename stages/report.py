"""Stage 6: compare teacher, student baseline and distilled student.

Reads metrics/{teacher,student,distilled}.json, the models' saved test logits (for agreement with
the teacher) and plots/*.csv. Writes report/report.md (table) and report/accuracy.png (test
accuracy per epoch), and logs both to one MLflow run. Run: python -m stages.report
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from kd import cli, io, metrics, reporting, tracking

MODELS = (("teacher", "teacher"), ("student baseline", "student"), ("distilled student", "distilled"))


def main(argv: list[str] | None = None) -> None:
    ap = cli.parser(__doc__)
    ap.add_argument("--metrics-dir", type=Path, default=Path("metrics"),
                    help="folder of {teacher,student,distilled}.json (default: metrics)")
    ap.add_argument("--models-dir", type=Path, default=Path("model"),
                    help="folder of the three checkpoints (default: model)")
    ap.add_argument("--plots-dir", type=Path, default=Path("plots"),
                    help="folder of the per-epoch CSVs (default: plots)")
    ap.add_argument("--out", type=Path, default=Path("report"),
                    help="folder for report.md and accuracy.png (default: report)")
    args = ap.parse_args(argv)
    p = cli.params_or_exit(args.params)

    with cli.friendly_errors():
        finals, logits, archs, histories = {}, {}, {}, {}
        for label, name in MODELS:
            finals[name] = json.loads((args.metrics_dir / f"{name}.json").read_text())
            ckpt = torch.load(args.models_dir / f"{name}.pt", map_location="cpu")
            logits[name], archs[name] = ckpt["test_logits"], ckpt["arch"]
            class_names = ckpt["class_names"]
            histories[label] = reporting.read_history(args.plots_dir / f"{name}.csv")
        rows = [{"name": label, "arch": archs[name], **finals[name],
                 "agreement": None if name == "teacher"
                 else metrics.agreement(logits[name], logits["teacher"])}
                for label, name in MODELS]
        gain = finals["distilled"]["test_acc"] - finals["student"]["test_acc"]
        teacher_lead = finals["teacher"]["test_acc"] - finals["student"]["test_acc"]
        table = reporting.comparison_table(rows)
        per_class = reporting.per_class_table(
            [label for label, _ in MODELS], class_names,
            {label: finals[name]["test_errors_per_class"] for label, name in MODELS})
        d = finals["distilled"]
        bias = ""
        if "test_errors_uncorrected" in d:
            bias = (f"\n\nThe transfer set lacked some classes: raising their logits by "
                    f"{d['bias_correction']:.1f} took the distilled student from "
                    f"{d['test_errors_uncorrected']} to {d['test_errors']} test errors.")
        md = (f"# Distillation report: {p.dataset}, T={p.T:g}, alpha={p.alpha:g}, seed={p.seed}\n\n"
              f"{table}\n"
              f"Distillation changed the student's test accuracy by {100 * gain:+.2f} points "
              f"({finals['student']['test_errors']} -> {finals['distilled']['test_errors']} "
              f"errors); the teacher is {100 * teacher_lead:+.2f} points from the student baseline."
              f"{bias}\n\n![test accuracy per epoch](accuracy.png)\n\n"
              f"## Test errors per class\n\n{per_class}")
        io.write_text(args.out / "report.md", md)
        reporting.accuracy_plot(histories, args.out / "accuracy.png",
                                f"{p.dataset}: test accuracy per epoch (T={p.T:g}, alpha={p.alpha:g})")
        with tracking.stage_run("report", p.dataset, {"dataset": p.dataset, "T": p.T,
                                                      "alpha": p.alpha, "seed": p.seed}) as run:
            run.log_metrics({"distill_gain": gain,
                             **{f"{n}_test_acc": f["test_acc"] for n, f in finals.items()},
                             "student_agreement": rows[1]["agreement"],
                             "distilled_agreement": rows[2]["agreement"]})
            run.log_artifact(args.out / "report.md")
            run.log_artifact(args.out / "accuracy.png")
    print(md)


if __name__ == "__main__":
    main()
