"""What the three training stages (teacher, student, distill) share, one step per function.

A training stage reads top to bottom: build a model, `loop.fit` it, `evaluate` it, `save` it (in
MLflow first, then its files). This module is the one place that decides what a result holds:
- `metrics/<name>.json`: what experiments are compared on (`Result.summary`: scores and the
  model's size and FLOPs, kd/train/cost.py; plus a stage's own, e.g. the distilled student's
  agreement): the same values for the same params and seed, so
  `dvc exp show` stays narrow and `dvc metrics diff` is quiet when nothing changed;
- MLflow: those values under the same names, plus timings (training, and the model's latency
  and throughput), losses and per-class errors;
- `model/<name>.pt`: weights, what is needed to rebuild the model, its test logits; nothing that
  differs between two runs with the same params, code and data (no run id, no timing), so DVC
  sees identical weights as an unchanged file;
- `plots/<name>.csv`: the per-epoch history (`HISTORY` columns), for `dvc plots` and the report.
"""

from __future__ import annotations

import csv
import hashlib
import io as _io
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from kd.config.params import Model, Params, Train
from kd.data.splits import Dataset
from kd.process import cores, distributed, files, params_watch
from kd.track import lookup, serving
from kd.train import cost, loop, metrics, nets

logger = logging.getLogger(__name__)
HISTORY = ("epoch", "train_loss", "val_loss", "val_acc", "val_errors", "test_loss", "test_acc",
           "test_errors")


@dataclass
class Outputs:
    name: str  # teacher, student or distilled: the logged model's name
    model: Path
    metrics: Path
    plots: Path


@dataclass
class Result:
    """A trained model's scores: `summary` goes to the metrics file and MLflow, `details` to
    MLflow only; `test_logits` (N, classes) go into the checkpoint; `history` (one dict per
    epoch) into plots/<name>.csv."""

    summary: dict
    details: dict
    test_logits: torch.Tensor
    history: list[dict]


def build_model(arch: str, cfg: Model, data: Dataset) -> nn.Module:
    model = nets.build(arch, data.in_shape, data.num_classes, cfg.input_dropout, cfg.dropout)
    return model.to(data.train.x.device)


CHECKPOINT_KEYS = ("arch", "in_shape", "classes", "class_names", "params", "input_dropout",
                   "dropout", "state_dict", "test_logits", "dataset")


def read_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict:
    """A checkpoint's dict; a missing, truncated or other kind of file is one UnreadableFile."""
    return files.load_torch(path, CHECKPOINT_KEYS, "model checkpoint", map_location=device)


def load_checkpoint(path: Path, device: torch.device) -> tuple[nn.Module, dict]:
    """Rebuild a saved model in eval mode; returns (model, the checkpoint dict)."""
    ckpt = read_checkpoint(path, device)
    model = nets.build(ckpt["arch"], tuple(ckpt["in_shape"]), ckpt["classes"],
                         ckpt["input_dropout"], ckpt["dropout"])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval(), ckpt


def run_params(p: Params, arch: str, net: Model, train: Train) -> dict:
    """A training stage's effective settings under names all three stages share (`arch`,
    `epochs`, `lr`, ...), so their MLflow runs line up row by row in the compare view."""
    # the loss's own knobs are the distill stage's to log (kd.losses.settings)
    return {"dataset": p.dataset, "preset": p.preset, "seed": p.seed, **asdict(net),
            **{k: v for k, v in asdict(train).items() if k != "knobs"}, "arch": arch,
            "world_size": distributed.world_size()}


def announce(stage: str, arch: str, model: nn.Module, data: Dataset, train: Train) -> None:
    logger.info(f"{stage}: {arch} ({nets.count_params(model):,} parameters) on {data.name}: "
                f"{len(data.train):,} train, {len(data.val):,} val, {len(data.test):,} test "
                f"images, {train.epochs} epochs, device {data.train.x.device}, "
                f"{cores.share_cores()} threads")


def evaluate(model: nn.Module, data: Dataset, fit: loop.Fit) -> Result:
    """Score the selected (best-validation) weights the model now holds."""
    t0 = time.perf_counter()
    test_logits = loop.predict(model, data.test, data)
    test = metrics.scores(test_logits, data.test.y, "test")
    val = metrics.scores(loop.predict(model, data.val, data), data.val.y, "val")
    summary = {"test_acc": test["test_acc"], "test_errors": test["test_errors"],
               "test_ece": metrics.expected_calibration_error(test_logits, data.test.y.cpu()),
               "val_acc": val["val_acc"], "best_epoch": fit.best_epoch,
               **cost.size(model, data.in_shape)}
    per_class = metrics.per_class_errors(test_logits, data.test.y, data.num_classes)
    # Timings vary by machine: MLflow and the report only. Under torchrun only rank 0 records.
    timings = cost.speed(model, data.in_shape) if distributed.is_main() else {}
    details = {"test_loss": test["test_loss"], "val_loss": val["val_loss"],
               "val_errors": val["val_errors"], **timings,
               "train_seconds": fit.train_seconds, "threads": fit.threads,
               "evaluate_seconds": time.perf_counter() - t0,
               "samples_per_s": sum(h["samples_per_s"] for h in fit.history) / len(fit.history),
               **{f"test_errors_class_{c}": n for c, n in enumerate(per_class)}}
    return Result(summary, details, test_logits, fit.history)


def history_csv(history: list[dict]) -> str:
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return buf.getvalue()


def save(run, out: Outputs, model: nn.Module, arch: str, net: Model, data: Dataset, result: Result,
         register_tags: dict | None = None) -> None:
    """Record the model in MLflow, then write the checkpoint, metrics file and CSV together.

    MLflow first: if logging fails, the stage's files stay as they were (and the run ends
    FAILED), so DVC never sees new outputs from a stage that did not finish. The servable model
    is logged before the summary, so the summary shows on the model's page. Under torchrun only
    rank 0 records and writes; the other ranks hold the same weights.
    """
    if not distributed.is_main():
        return
    params_watch.unchanged()
    checkpoint = files.torch_bytes({
        "arch": arch, "in_shape": list(data.in_shape), "classes": data.num_classes,
        "class_names": list(data.classes), "params": result.summary["params"],
        "input_dropout": net.input_dropout, "dropout": net.dropout,
        "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
        "test_logits": result.test_logits.cpu(), "dataset": data.name,
    })
    history_text = history_csv(result.history)
    # A float64 example makes a float64 signature: see serving.Servable for why not uint8.
    t0 = time.perf_counter()
    run.log_model(serving.Servable(model, data.mean, data.std), data.test.x[:2].double(),
                  out.name, register_tags)
    run.log_summary({**result.summary, **result.details,
                     "log_model_seconds": time.perf_counter() - t0})
    run.log_file(out.plots.name, history_text)
    run.set_tags({lookup.CHECKPOINT_TAG: hashlib.sha256(checkpoint).hexdigest()})
    files.write_files({out.model: checkpoint, out.metrics: files.json_text(result.summary),
                    out.plots: history_text})


def conclude(stage: str, result: Result, fit: loop.Fit) -> None:
    s = result.summary
    logger.info(f"{stage}: test accuracy {s['test_acc']:.4f} ({s['test_errors']} errors), "
                f"best val epoch {fit.best_epoch}, {fit.train_seconds:.0f}s")
