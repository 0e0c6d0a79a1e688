"""The training loop: plain PyTorch, one function for teacher, student and distillation.

In:  a model, a `Dataset` already on its device, `params.Train` knobs and, to distill, a
     `Teaching` (kd.train.teaching.Teacher: the teacher's logits and the distillation loss). Without
     one the loss is cross-entropy with the labels (mixed like the images, under mixup).
Out: `Fit` with one dict of floats per epoch; the model ends holding the weights of the epoch with
     the best *validation* accuracy (the test split is scored each epoch for the learning curves,
     never used to choose anything).

Each epoch's metrics go to `run.log_epoch` (kd.track.mlflow_runs: MLflow, or a no-op when tracking is
off) and a progress line to the `kd.train.loop` logger.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from kd.config.params import Train
from kd.data.splits import Dataset, Split, mixup, normalize, random_flip, random_shift
from kd.errors import PipelineError
from kd.process import cores, distributed, params_watch
from kd.train import device as devices
from kd.train import sgd
from kd.train.cross_entropy import hard_loss
from kd.train.metrics import scores
from kd.train.nets import apply_max_norm


@dataclass
class Batch:
    x: torch.Tensor  # the normalised inputs the model sees, after every augmentation
    y: torch.Tensor  # labels (of each mixed image's own part)
    idx: torch.Tensor  # row numbers in the training split
    partner: torch.Tensor | None = None  # mixup: the position of each image's partner in the
    #                                      whole (global) batch
    partner_y: torch.Tensor | None = None  # mixup: the partner's label
    lam: torch.Tensor | None = None  # mixup: each image's own weight (N,)

    def rows(self, part: slice) -> Batch:
        """The images in `part` of the batch (a rank's share under torchrun), with their
        partners' labels and weights."""
        return Batch(*(None if t is None else t[part] for t in
                       (self.x, self.y, self.idx, self.partner, self.partner_y, self.lam)))


# Big enough to keep the matmuls efficient, small enough that a CNN's activations stay well under
# a gigabyte: their memory grows with the batch, and beyond this size the matmuls gain nothing.
EVAL_BATCH = 1024


logger = logging.getLogger(__name__)


class Diverged(PipelineError):
    """The training loss became NaN or infinite."""


@dataclass
class Fit:
    history: list[dict[str, float]]
    best_epoch: int
    train_seconds: float
    threads: int  # torch's CPU threads while it trained (the bits do not depend on it)


@torch.no_grad()
def predict(model: nn.Module, split: Split, data: Dataset, batch: int = EVAL_BATCH) -> torch.Tensor:
    """Logits (N, classes) in float32 for a whole split, in eval mode (dropout off, BN frozen)."""
    was_training = model.training
    model.eval()
    dev = split.x.device
    mine = distributed.rows(len(split))  # under torchrun, each rank scores a block of rows
    outs = []
    with cores.computing(), devices.autocast(dev):
        # An empty block still runs (on zero rows), so the gathered logits have their shape.
        for i in range(mine.start, mine.stop, batch) or [mine.start]:
            x = split.x[i:min(i + batch, mine.stop)]
            outs.append(model(normalize(x, data.mean, data.std)).float())
    model.train(was_training)
    return distributed.gather_rows(torch.cat(outs), len(split))


class Teaching(Protocol):
    """What a distilled student learns from (kd.train.teaching.Teacher): its whole loss for a batch."""
    setting: str  # the loss and its settings in words, for the one-line error of a divergence

    def loss(self, student_logits: torch.Tensor, batch: Batch, epoch: int) -> torch.Tensor: ...


def optimizer(model: nn.Module, cfg: Train, total_steps: int) -> sgd.SGD:
    """SGD (Nesterov when momentum > 0) under a one-cycle learning-rate schedule.

    One-cycle warms up then anneals; it tolerates the large learning rates that make SGD fast.
    Momentum stays as set (torch's OneCycleLR would cycle it between 0.85 and 0.95 by default,
    overruling `momentum`; kd/train/sgd.py is its schedule with cycle_momentum=False).
    """
    return sgd.SGD(model.parameters(), sgd.OneCycle(cfg.lr, total_steps), cfg.momentum,
                   nesterov=cfg.momentum > 0, weight_decay=cfg.weight_decay)


def batch_inputs(split: Split, idx: torch.Tensor, data: Dataset, cfg: Train,
                 gen: torch.Generator, rng: np.random.Generator) -> Batch:
    """Cut a batch by index, augment it (on uint8: 4x less memory traffic), normalise it, mix it."""
    x = split.x[idx]
    x = random_shift(x, cfg.shift, gen)
    if cfg.flip:
        x = random_flip(x, gen)
    x = normalize(x, data.mean, data.std)
    if cfg.mixup <= 0:
        return Batch(x, split.y[idx], idx)
    mixed, partner, lam = mixup(x, cfg.mixup, gen, rng)
    y = split.y[idx]
    return Batch(mixed, y, idx, partner, y[partner], lam)


def fit(model: nn.Module, data: Dataset, cfg: Train, *, seed: int, teacher: Teaching | None = None,
        max_norm: float = 0.0, run=None, label: str = "train") -> Fit:
    """Train `model` in place, on the labels or from `teacher`; log each epoch to `run`. Under
    torchrun every rank calls this with the same arguments and trains its share of each batch
    (kd/process/distributed.py)."""
    dev = data.train.x.device
    n = len(data.train)
    # Whole batches only (a last batch of 1 image breaks BatchNorm); shuffling changes which few
    # images wait for the next epoch.
    bs = min(cfg.batch_size, n)
    distributed.check_batch(label, bs)
    steps = n // bs
    net = distributed.data_parallel(model, seed)  # `model` itself in one process
    mine = distributed.share(bs)
    opt = optimizer(model, cfg, total_steps=cfg.epochs * steps)
    gen = torch.Generator(device=dev).manual_seed(seed)
    rng = np.random.default_rng(seed)  # mixup's Beta draws only
    history: list[dict[str, float]] = []
    best_acc, best_state, best_epoch = -1.0, None, 0
    t_start = time.perf_counter()
    tty = sys.stderr.isatty()
    with cores.computing() as threads:  # this process's share of the cores while it trains
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            t0 = time.perf_counter()
            perm = torch.randperm(n, generator=gen, device=dev)
            loss_sum = torch.zeros((), device=dev)
            bar = tqdm(total=steps, desc=f"{label} {epoch}/{cfg.epochs}", leave=False,
                       disable=not (tty and distributed.is_main()), unit="batch")
            for step in range(steps):
                idx = perm[step * bs:(step + 1) * bs]
                # The whole batch is cut and augmented on every rank (the generators stay in
                # step), then each rank trains on its share.
                batch = batch_inputs(data.train, idx, data, cfg, gen, rng).rows(mine)
                with devices.autocast(dev):
                    logits = net(batch.x)
                logits = logits.float()
                loss = (hard_loss(logits, batch.y, batch.partner_y, batch.lam) if teacher is None
                        else teacher.loss(logits, batch, epoch))
                opt.zero_grad()
                loss.backward()
                if cfg.grad_clip > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                apply_max_norm(model, max_norm)
                # Accumulate on the device: no .item() (a host sync) per step.
                loss_sum += loss.detach()
                bar.update()
            bar.close()
            train_loss = float(distributed.mean(loss_sum)) / steps  # the epoch's one sync
            if not math.isfinite(train_loss):
                under = f" under loss {teacher.setting}" if teacher is not None else ""
                raise Diverged(f"{label}: training loss became {train_loss} in epoch {epoch}{under}; "
                               "lower the learning rate or set grad_clip (the model was not written)")
            train_seconds = time.perf_counter() - t0
            distributed.sync_buffers(model)
            val = scores(predict(model, data.val, data), data.val.y, "val")
            test = scores(predict(model, data.test, data), data.test.y, "test")
            row = {"epoch": epoch, "train_loss": train_loss, **val, **test,
                   "epoch_seconds": train_seconds, "samples_per_s": steps * bs / train_seconds,
                   "lr": opt.lr}
            history.append(row)
            if run is not None:
                run.log_epoch(row, epoch)
            params_watch.between_epochs()
            if val["val_acc"] > best_acc:
                best_acc, best_epoch = val["val_acc"], epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            elapsed = time.perf_counter() - t_start
            left = elapsed / epoch * (cfg.epochs - epoch)
            logger.info(f"{label} epoch {epoch}/{cfg.epochs}  loss {train_loss:.4f}  "
                        f"val acc {val['val_acc']:.4f}  test acc {test['test_acc']:.4f}  "
                        f"{row['samples_per_s']:,.0f} samples/s  {train_seconds:.1f}s  "
                        f"~{left:.0f}s left")
    model.load_state_dict(best_state)
    return Fit(history, best_epoch, time.perf_counter() - t_start, threads)
