"""Stage 3: train the student baseline: the small model alone, with plain cross-entropy.

Reads params: dataset, seed, student.*. Writes model/student.pt, metrics/student.json,
plots/student.csv and one MLflow run. Run: python -m stages.student
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from kd import cli, data, device, training
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

    with cli.friendly_errors():
        torch.manual_seed(p.seed)
        ds = data.load(Path(args.data or f"data/{p.dataset}")).to(device.pick())
        arch = resolve_arch(p.student_model.arch, p.dataset, "student")
        model = training.build_model(arch, p.student_model, ds)
        training.train_and_record(
            "student", p, ds, model, arch, p.student_model, p.student,
            loss_fn=lambda logits, y, idx, x: F.cross_entropy(logits, y),
            out=training.Outputs(args.model, args.metrics, args.plots),
            run_params={"dataset": p.dataset, "seed": p.seed, "student": p.raw["student"],
                        "student.arch_resolved": arch})


if __name__ == "__main__":
    main()
