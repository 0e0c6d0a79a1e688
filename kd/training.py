"""What the three training stages (teacher, student, distill) share: fit, score, save, record.

In:  a built model, the data on its device, the knobs, a loss function, output paths.
Out: `model/<name>.pt` (weights + what is needed to rebuild it + its test logits),
     `metrics/<name>.json`, `plots/<name>.csv` (one row per epoch), and one MLflow run with the
     stage's params, per-epoch metrics (step = epoch), final metrics and the logged model.
Stages decide *what* to train; this module is the one place that decides how a result is kept.
"""

from __future__ import annotations

import csv
import io as _io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kd import io, loop, metrics, models, tracking
from kd.data import Dataset, normalize
from kd.params import Model, Params, Train


@dataclass
class Outputs:
    model: Path
    metrics: Path
    plots: Path


def build_model(arch: str, cfg: Model, data: Dataset) -> nn.Module:
    model = models.build(arch, data.in_shape, data.num_classes, cfg.input_dropout, cfg.dropout)
    return model.to(data.train.x.device)


def load_checkpoint(path: Path, device: torch.device) -> tuple[nn.Module, dict]:
    """Rebuild a saved model in eval mode; returns (model, the checkpoint dict)."""
    ckpt = torch.load(path, map_location=device)
    model = models.build(ckpt["arch"], tuple(ckpt["in_shape"]), ckpt["classes"],
                         ckpt["input_dropout"], ckpt["dropout"])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval(), ckpt


def history_csv(history: list[dict]) -> str:
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(history[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return buf.getvalue()


def train_and_record(stage: str, p: Params, data: Dataset, model: nn.Module, arch: str,
                     model_cfg: Model, train_cfg: Train, loss_fn: loop.LossFn, out: Outputs,
                     run_params: dict, tags: dict | None = None,
                     after_fit: Callable[[nn.Module], dict] | None = None,
                     extra_metrics: Callable[[torch.Tensor], dict] | None = None) -> dict:
    """Train `model`, then write the stage's outputs and its MLflow run; returns final metrics.

    `after_fit(model)` may adjust the trained model (bias correction) and returns metrics;
    `extra_metrics(test_logits)` adds metrics computed from the final model's test logits.
    """
    n_params = models.count_params(model)
    print(f"{stage}: {arch} ({n_params:,} parameters) on {data.name}: {len(data.train):,} train, "
          f"{len(data.val):,} val, {len(data.test):,} test images, {train_cfg.epochs} epochs, "
          f"device {data.train.x.device}", flush=True)
    with tracking.stage_run(stage, p.dataset, run_params, tags) as run:
        fit = loop.fit(model, data, train_cfg, loss_fn, seed=p.seed, max_norm=model_cfg.max_norm,
                       log=run.log_metrics, label=stage)
        adjusted = after_fit(model) if after_fit else {}
        test_logits = loop.predict(model, data.test, data)
        val_logits = loop.predict(model, data.val, data)
        final = {
            **metrics.scores(test_logits, data.test.y, "test"),
            **metrics.scores(val_logits, data.val.y, "val"),
            "test_ece": metrics.expected_calibration_error(test_logits, data.test.y.cpu()),
            "params": n_params,
            "best_epoch": fit.best_epoch,
            "train_seconds": fit.train_seconds,
            "samples_per_s": sum(h["samples_per_s"] for h in fit.history) / len(fit.history),
            **adjusted,
            **(extra_metrics(test_logits) if extra_metrics else {}),
        }
        per_class = metrics.per_class_errors(test_logits, data.test.y, data.num_classes)
        io.save_torch(out.model, {
            "arch": arch, "in_shape": list(data.in_shape), "classes": data.num_classes,
            "class_names": list(data.classes),
            "input_dropout": model_cfg.input_dropout, "dropout": model_cfg.dropout,
            "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
            "test_logits": test_logits.cpu(), "dataset": data.name, "mlflow_run_id": run.run_id,
        })
        io.write_json(out.metrics, {**final, "test_errors_per_class": per_class})
        io.write_text(out.plots, history_csv(fit.history))
        run.log_metrics(final)
        run.log_metrics({f"test_errors_class_{c}": n for c, n in enumerate(per_class)})
        run.log_model(model, normalize(data.test.x[:2], data.mean, data.std))
        run.log_artifact(out.plots)
    print(f"{stage}: test accuracy {final['test_acc']:.4f} ({final['test_errors']} errors), "
          f"best val epoch {fit.best_epoch}, {fit.train_seconds:.0f}s", flush=True)
    return final
