"""Stage 2: train the teacher (the big, regularised model) with plain cross-entropy.

Reads params: dataset, seed, teacher.*. Writes model/teacher.pt, metrics/teacher.json,
plots/teacher.csv and one MLflow run. Run: python -m stages.teacher
"""

from __future__ import annotations

from pathlib import Path

import torch

from kd import cli, data, device, distributed, loop, tracking, training
from kd.archs import resolve_arch


def main(argv: list[str] | None = None) -> None:
    ap = cli.parser(__doc__)
    ap.add_argument("--data", help="prepared dataset folder (default: data/<dataset>)")
    ap.add_argument("--model", type=Path, default=Path("model/teacher.pt"),
                    help="checkpoint to write (default: model/teacher.pt)")
    ap.add_argument("--metrics", type=Path, default=Path("metrics/teacher.json"),
                    help="final metrics JSON (default: metrics/teacher.json)")
    ap.add_argument("--plots", type=Path, default=Path("plots/teacher.csv"),
                    help="per-epoch metrics CSV (default: plots/teacher.csv)")
    args = ap.parse_args(argv)
    p = cli.params_or_exit(args.params)

    with cli.friendly_errors(), distributed.session():
        torch.manual_seed(p.seed)
        ds = data.load(Path(args.data or f"data/{p.dataset}")).to(device.pick())
        arch = resolve_arch(p.teacher_model.arch, p.dataset, "teacher")
        model = training.build_model(arch, p.teacher_model, ds)
        training.announce("teacher", arch, model, ds, p.teacher)
        out = training.Outputs(args.model, args.metrics, args.plots)
        with tracking.stage_run("teacher", p.dataset,
                                training.run_params(p, arch, p.teacher_model, p.teacher)) as run:
            fit = loop.fit(model, ds, p.teacher, loop.hard_label_loss, seed=p.seed,
                           max_norm=p.teacher_model.max_norm, log=run.log_epoch, label="teacher")
            result = training.evaluate(model, ds, fit)
            training.save(run, "teacher", out, model, arch, p.teacher_model, ds, result, fit.history)
        training.conclude("teacher", result, fit)


if __name__ == "__main__":
    main()
