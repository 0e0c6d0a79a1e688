"""Train a network on the labels alone, with plain cross-entropy: the body of stages 2 and 3.

The teacher (stages/teacher.py) and the student baseline (stages/student.py) are the same stage
for two roles, so both call `main` here (a stage never imports another stage). Each reads params
dataset, seed and its own section (`teacher.*` or `student.*`), and writes model/<role>.pt,
metrics/<role>.json, plots/<role>.csv and one MLflow run.
"""

from __future__ import annotations

from pathlib import Path

import torch

from kd.data import splits
from kd.datasets import resolve_arch
from kd.process import cli, distributed
from kd.track import mlflow_runs
from kd.train import device, loop, steps


def main(role: str, doc: str, argv: list[str] | None = None) -> None:
    ap = cli.parser(doc)
    cli.data_option(ap)
    cli.model_outputs(ap, role)
    args = ap.parse_args(argv)
    p = cli.params_or_exit(args.params)
    cfg = getattr(p, role)  # the role's section: the network's knobs, then the training's

    with cli.friendly_errors(), distributed.session():
        torch.manual_seed(p.seed)
        folder = Path(args.data or f"data/{p.dataset}")
        ds = splits.load(folder).to(device.pick())
        arch = resolve_arch(cfg.arch, p.dataset, role)
        model = steps.build_model(arch, cfg, ds)
        steps.announce(role, arch, model, ds, cfg)
        out = steps.Outputs(role, args.model, args.metrics, args.plots)
        with mlflow_runs.stage_run(role, p.dataset, steps.run_params(p, arch, cfg, cfg)) as run:
            run.log_splits(folder, p.dataset)
            fit = loop.fit(model, ds, cfg, seed=p.seed, max_norm=cfg.max_norm, run=run,
                           label=role)
            result = steps.evaluate(model, ds, fit)
            steps.save(run, out, model, arch, cfg, ds, result)
        steps.conclude(role, result, fit)
