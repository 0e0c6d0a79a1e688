"""The training loop as the benchmark runs it: `kd.train.loop.fit` itself, on a training split of
exactly `batches` batches, timed by fit's own clock (`samples_per_s` counts the training steps
only; the per-epoch evaluation is outside it). Contenders differ in the model they hand to fit
(memory format, torch.compile), never in a copy of the loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from kd.config.params import Model, Params, Train
from kd.data.splits import Dataset, Split
from kd.train import device, loop, nets


@dataclass
class Setup:
    """What the measurements share: the prepared data on the device and the params."""

    dev: torch.device
    ds: Dataset
    params: Params


@dataclass
class Role:
    arch: str
    model: Model
    train: Train


def random_setup(params: Params, batches: int = 64) -> Setup:
    """Fashion-MNIST-shaped random images (speed does not depend on the pixels), enough rows
    for `batches` batches of any role, on the device the stages would use."""
    gen = torch.Generator().manual_seed(0)
    n = batches * max(params.teacher.batch_size, params.student.batch_size)

    def split() -> Split:
        return Split(torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=gen),
                     torch.randint(0, 10, (n,), generator=gen))

    ds = Dataset("fashion-mnist", split(), split(), split(), tuple(map(str, range(10))),
                 torch.tensor([0.286]), torch.tensor([0.353]))
    dev = device.pick()
    return Setup(dev, ds.to(dev), params)


def role(s: Setup, name: str, arch: str) -> Role:
    """The knobs params.yaml gives teacher or student, for one epoch without augmentation."""
    cfg = getattr(s.params, name)  # the role's section: a Model's keys and a Train's
    return Role(arch, cfg, replace(cfg, epochs=1, shift=0, flip=False, mixup=0.0))


def build(s: Setup, r: Role, memory_format: torch.memory_format = torch.channels_last
          ) -> nn.Module:
    """The model as the stages build it (channels-last), or in another `memory_format`."""
    torch.manual_seed(0)  # the same initial weights for every contender and repeat
    return nets.build(r.arch, s.ds.in_shape, s.ds.num_classes, r.model.input_dropout,
                        r.model.dropout, memory_format).to(s.dev)


def subset(ds: Dataset, n_train: int, n_eval: int = 256) -> Dataset:
    """The first rows of each split; fit's per-epoch validation then costs next to nothing."""
    cut = lambda sp, n: Split(sp.x[:n], sp.y[:n])  # noqa: E731
    return Dataset(ds.name, cut(ds.train, n_train), cut(ds.val, n_eval), cut(ds.test, n_eval),
                   ds.classes, ds.mean, ds.std)


def fit_rate(s: Setup, r: Role, make: Callable[[], nn.Module] | None = None
             ) -> Callable[[int], float]:
    """samples/s of kd.train.loop.fit over `batches` batches (fit's own clock), on the model `make`
    returns (default: built as the stages build it)."""
    def run(batches: int) -> float:
        model = make() if make else build(s, r)
        data = subset(s.ds, batches * r.train.batch_size)
        fit = loop.fit(model, data, r.train, seed=0, max_norm=r.model.max_norm)
        return fit.history[0]["samples_per_s"]
    return run
