"""Training and evaluation speed: the pipeline's own loop against the usual PyTorch recipe.

The pipeline side is `kd.loop.fit` itself (whole split resident as uint8, batches cut by index,
batched normalise) on a training split of exactly `batches` batches; its own `samples_per_s`
times the training steps only (the per-epoch validation is outside its clock). The usual side is
torchvision's FashionMNIST with ToTensor + Normalize through a DataLoader. Model, batch size,
optimiser (SGD, Nesterov momentum, weight decay), one-cycle schedule and max-norm are the same.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from benchmarks.common import sync
from kd import device as devices
from kd import loop, models
from kd.data import Dataset, Split
from kd.losses import distillation_loss
from kd.params import Model, Params, Train

# Hinton et al.'s MNIST pair, named explicitly: on Fashion-MNIST `auto` picks a CNN teacher.
TEACHER_ARCH = "mlp:1200-1200"
STUDENT_ARCH = "mlp:800-800"


@dataclass
class Setup:
    """What the measurements share: the prepared data on the device, torchvision's copy, knobs."""

    dev: torch.device
    ds: Dataset
    tv_train: torch.utils.data.Dataset
    tv_test: torch.utils.data.Dataset
    params: Params
    workers: int
    teacher_arch: str = TEACHER_ARCH
    student_arch: str = STUDENT_ARCH


@dataclass
class Role:
    arch: str
    model: Model
    train: Train


def role(s: Setup, name: str) -> Role:
    """The knobs params.yaml gives teacher or student, for one epoch without augmentation: the
    usual recipe here does none, and the comparison must do the same work on both sides."""
    if name == "teacher":
        arch, model_cfg, train_cfg = s.teacher_arch, s.params.teacher_model, s.params.teacher
    else:
        arch, model_cfg, train_cfg = s.student_arch, s.params.student_model, s.params.student
    return Role(arch, model_cfg, replace(train_cfg, epochs=1, shift=0, flip=False))


def build(s: Setup, r: Role) -> nn.Module:
    torch.manual_seed(0)  # the same initial weights for every contender and repeat
    return models.build(r.arch, s.ds.in_shape, s.ds.num_classes, r.model.input_dropout,
                        r.model.dropout).to(s.dev)


def torchvision_copy(raw_dir: Path, root: Path, ds: Dataset):
    """torchvision 0.29's FashionMNIST reads *decompressed* IDX files from root/FashionMNIST/raw
    (its existence check strips .gz), so the .gz files are unpacked there; download=False."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in raw_dir.glob("*-ubyte.gz"):
        (raw / gz.name.removesuffix(".gz")).write_bytes(gzip.decompress(gz.read_bytes()))
    # The usual recipe: ToTensor, then Normalize with the training set's statistics.
    tf = transforms.Compose([transforms.ToTensor(),
                             transforms.Normalize(ds.mean.tolist(), ds.std.tolist())])
    t0 = time.perf_counter()
    train = datasets.FashionMNIST(root, train=True, transform=tf, download=False)
    test = datasets.FashionMNIST(root, train=False, transform=tf, download=False)
    return train, test, time.perf_counter() - t0


def subset(ds: Dataset, n_train: int, n_eval: int = 256) -> Dataset:
    """The first rows of each split; fit's per-epoch validation then costs next to nothing."""
    cut = lambda sp, n: Split(sp.x[:n], sp.y[:n])  # noqa: E731
    return Dataset(ds.name, cut(ds.train, n_train), cut(ds.val, n_eval), cut(ds.test, n_eval),
                   ds.classes, ds.mean, ds.std)


def ce(logits: torch.Tensor, batch: loop.Batch) -> torch.Tensor:
    return F.cross_entropy(logits, batch.y)


def pipeline_train(s: Setup, r: Role, loss_fn: loop.LossFn = ce) -> Callable[[int], float]:
    """samples/s of kd.loop.fit over `batches` batches (fit's own clock)."""
    def run(batches: int) -> float:
        model = build(s, r)
        data = subset(s.ds, batches * r.train.batch_size)
        with contextlib.redirect_stdout(io.StringIO()):  # fit prints one line per epoch
            fit = loop.fit(model, data, r.train, loss_fn, seed=0, max_norm=r.model.max_norm)
        return fit.history[0]["samples_per_s"]
    return run


@contextlib.contextmanager
def fused_sgd() -> Iterator[None]:
    """What-if, without editing the library: kd.loop.fit builds `torch.optim.SGD(...)` at call
    time, so swapping that name for SGD with fused=True (one kernel for the whole update instead
    of several passes per parameter) measures the change fit would get from it."""
    original = torch.optim.SGD
    torch.optim.SGD = functools.partial(original, fused=True)
    try:
        yield
    finally:
        torch.optim.SGD = original


def pipeline_train_fused(s: Setup, r: Role) -> Callable[[int], float]:
    run = pipeline_train(s, r)

    def fused(batches: int) -> float:
        with fused_sgd():
            return run(batches)
    return fused


def usual_train(s: Setup, r: Role) -> Callable[[int], float]:
    """samples/s of the textbook loop: DataLoader over torchvision's dataset, same step."""
    cfg = r.train

    def run(batches: int) -> float:
        model = build(s, r).train()
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                              nesterov=cfg.momentum > 0, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=batches)
        loader = DataLoader(s.tv_train, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                            num_workers=s.workers, pin_memory=s.dev.type == "cuda",
                            generator=torch.Generator().manual_seed(0))
        sync(s.dev)
        t0 = time.perf_counter()
        # zip pulls from range first, so the loader never prepares a batch that is not used.
        for _, (x, y) in zip(range(batches), loader, strict=False):
            x, y = x.to(s.dev, non_blocking=True), y.to(s.dev, non_blocking=True)
            with devices.autocast(s.dev):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            models.apply_max_norm(model, r.model.max_norm)
        sync(s.dev)
        return batches * cfg.batch_size / (time.perf_counter() - t0)
    return run


def soft_targets(s: Setup, teacher: nn.Module, n: int) -> torch.Tensor:
    """Cached teacher logits for the first n training images, as the soft_targets stage makes."""
    return loop.predict(teacher, subset(s.ds, n).train, s.ds)


def distill_losses(s: Setup, batches: int) -> tuple[loop.LossFn, loop.LossFn]:
    """Hinton's loss with cached logits looked up by row, and with the teacher run on the batch
    (eval mode, no_grad, autocast), exactly as stages/distill.py builds them."""
    teacher = build(s, role(s, "teacher")).eval()
    T, alpha = s.params.T, s.params.alpha
    cache = soft_targets(s, teacher, batches * s.params.distill.batch_size)

    def cached(logits, batch):
        return distillation_loss(logits, cache[batch.idx], batch.y, T, alpha)

    @torch.no_grad()
    def teacher_logits(x: torch.Tensor) -> torch.Tensor:
        with devices.autocast(s.dev):
            return teacher(x).float()

    def online(logits, batch):
        return distillation_loss(logits, teacher_logits(batch.x), batch.y, T, alpha)
    return cached, online


def distill_role(s: Setup) -> Role:
    """The distill stage trains the student's network with the distill.* knobs."""
    r = role(s, "student")
    return replace(r, train=replace(s.params.distill, epochs=1, shift=0, flip=False, mixup=0.0))


def pipeline_inputs(s: Setup, r: Role) -> Callable[[int], float]:
    """samples/s of the loop's input path alone: cut by index, augment (off), normalise."""
    def run(batches: int) -> float:
        bs = r.train.batch_size
        gen = torch.Generator(device=s.dev).manual_seed(0)
        rng = np.random.default_rng(0)
        sync(s.dev)
        t0 = time.perf_counter()
        perm = torch.randperm(len(s.ds.train), generator=gen, device=s.dev)
        for step in range(batches):
            idx = perm[step * bs:(step + 1) * bs]
            loop.batch_inputs(s.ds.train, idx, s.ds, r.train, gen, rng)
        sync(s.dev)
        return batches * bs / (time.perf_counter() - t0)
    return run


def usual_inputs(s: Setup, r: Role) -> Callable[[int], float]:
    """samples/s of the DataLoader alone (ToTensor + Normalize per image, collate, to device)."""
    def run(batches: int) -> float:
        loader = DataLoader(s.tv_train, batch_size=r.train.batch_size, shuffle=True,
                            drop_last=True, num_workers=s.workers,
                            pin_memory=s.dev.type == "cuda", generator=torch.Generator().manual_seed(0))
        sync(s.dev)
        t0 = time.perf_counter()
        for _, (x, y) in zip(range(batches), loader, strict=False):
            x.to(s.dev, non_blocking=True), y.to(s.dev, non_blocking=True)
        sync(s.dev)
        return batches * r.train.batch_size / (time.perf_counter() - t0)
    return run


def student_epoch_row(s: Setup) -> dict:
    """One real epoch dict as kd.loop.fit logs it (2 batches are enough to get its keys)."""
    r = role(s, "student")
    with contextlib.redirect_stdout(io.StringIO()):
        fit = loop.fit(build(s, r), subset(s.ds, 2 * r.train.batch_size), r.train,
                       ce, seed=0)
    return fit.history[0]
