"""Stage 3: train the student baseline: the small model alone, with plain cross-entropy.

Reads params: dataset, seed, student.*. Writes model/student.pt, metrics/student.json,
plots/student.csv and one MLflow run. Run: python -m stages.student
"""

from __future__ import annotations

from pathlib import Path

import torch

from kd import cli, data, device, distributed, loop, tracking, training
from kd.archs import resolve_arch


def main(argv: list[str] | None = None) -> None:
    ap = cli.parser(__doc__)
    ap.add_argument("--data", help="prepared dataset folder (default: data/<dataset>)")
    ap.add_argument("--model", type=Path, default=Path("model/student.pt"),
                    help="checkpoint to write (default: model/student.pt)")
    ap.add_argument("--metrics", type=Path, default=Path("metrics/student.json"),
                    help="final metrics JSON (default: metrics/student.json)")
    ap.add_argument("--plots", type=Path, default=Path("plots/student.csv"),
                    help="per-epoch metrics CSV (default: plots/student.csv)")
    args = ap.parse_args(argv)
    p = cli.params_or_exit(args.params)

    with cli.friendly_errors(), distributed.session():
        torch.manual_seed(p.seed)
        ds = data.load(Path(args.data or f"data/{p.dataset}")).to(device.pick())
        arch = resolve_arch(p.student_model.arch, p.dataset, "student")
        model = training.build_model(arch, p.student_model, ds)
        training.announce("student", arch, model, ds, p.student)
        out = training.Outputs(args.model, args.metrics, args.plots)
        with tracking.stage_run("student", p.dataset,
                                training.run_params(p, arch, p.student_model, p.student)) as run:
            fit = loop.fit(model, ds, p.student, loop.hard_label_loss, seed=p.seed,
                           max_norm=p.student_model.max_norm, log=run.log_epoch, label="student")
            result = training.evaluate(model, ds, fit)
            training.save(run, "student", out, model, arch, p.student_model, ds, result, fit.history)
        training.conclude("student", result, fit)


if __name__ == "__main__":
    main()
