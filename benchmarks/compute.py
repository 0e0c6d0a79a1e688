"""What the hardware can do for the teacher's own layer shapes.

The ceiling of a training step is the time its convolutions and matrix multiplies take when each
runs alone, forward and backward (input gradient, except for the first layer, whose input needs
none; weight gradient), in the faster of the two memory formats (NCHW, channels-last) for that
layer, under the loop's autocast (fp32 on the CPU, bf16 on CUDA). Everything else a step does
(BatchNorm, ReLU, pooling, dropout masks, the loss, the optimiser, autograd's bookkeeping) is
outside the ceiling: it is what separates the achieved rate from it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import sync
from benchmarks.loops import Role, Setup, build, subset
from kd.train import device as devices
from kd.train import loop

FORMATS = (torch.contiguous_format, torch.channels_last)


@dataclass
class Layer:
    module: nn.Conv2d | nn.Linear
    in_shape: tuple[int, ...]  # one sample's input
    out_shape: tuple[int, ...]  # one sample's output
    first: bool  # its input is the image: no input gradient

    def macs(self) -> int:
        """Multiply-adds of one sample's forward pass."""
        out = 1
        for d in self.out_shape:
            out *= d
        if isinstance(self.module, nn.Linear):
            return out * self.module.in_features
        k = self.module.kernel_size
        return out * self.module.in_channels // self.module.groups * k[0] * k[1]

    def train_flops(self) -> int:
        """FLOPs of one sample in a training step: forward, weight gradient, input gradient."""
        return 2 * self.macs() * (2 if self.first else 3)


def layers(model: nn.Module, in_shape: tuple[int, int, int]) -> list[Layer]:
    """The convolutions and linear layers of a model, with the shapes a forward pass gives them."""
    found: list[Layer] = []

    def hook(module, inputs, output):
        found.append(Layer(module, tuple(inputs[0].shape[1:]), tuple(output.shape[1:]),
                           first=not found))
    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    dev = next(model.parameters()).device
    with torch.no_grad():
        model.eval()(torch.zeros((1, *in_shape), device=dev))
    for h in handles:
        h.remove()
    return found


def _layer_step(layer: Layer, batch: int, dev: torch.device, fmt: torch.memory_format
                ) -> Callable[[], None]:
    """One forward and backward of this layer's kernels alone, on random data."""
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn((batch, *layer.in_shape), generator=g, device=dev)
    dy = torch.randn((batch, *layer.out_shape), generator=g, device=dev)
    m = layer.module
    w = torch.randn(m.weight.shape, generator=g, device=dev)
    if isinstance(m, nn.Linear):
        x, dy = x.flatten(1), dy.flatten(1)

        def linear() -> None:
            x @ w.t()
            if not layer.first:
                dy @ w
            dy.t() @ x
        return linear
    x, w, dy = (t.contiguous(memory_format=fmt) for t in (x, w, dy))
    mask = [not layer.first, True, False]

    def conv() -> None:
        F.conv2d(x, w, None, m.stride, m.padding, m.dilation, m.groups)
        torch.ops.aten.convolution_backward(dy, x, w, None, list(m.stride), list(m.padding),
                                            list(m.dilation), False, [0, 0], m.groups, mask)
    return conv


def kernel_ceiling(s: Setup, r: Role) -> tuple[Callable[[int], float], int]:
    """(fn(iters) -> the ceiling in samples/s, training FLOPs per sample) for this role's model:
    per layer, the faster memory format's time over `iters` steps."""
    model = build(s, r)
    found = layers(model, s.ds.in_shape)
    bs = r.train.batch_size
    steps = [[_layer_step(layer, bs, s.dev, fmt) for fmt in FORMATS] for layer in found]

    def run(iters: int) -> float:
        total = 0.0
        with devices.autocast(s.dev):
            for variants in steps:
                best = float("inf")
                for step in variants:
                    sync(s.dev)
                    t0 = time.perf_counter()
                    for _ in range(max(iters, 1)):
                        step()
                    sync(s.dev)
                    best = min(best, (time.perf_counter() - t0) / max(iters, 1))
                total += best
        return bs / total
    return run, sum(layer.train_flops() for layer in found)


def optimizer_step_ms(s: Setup, r: Role, **sgd_kw) -> Callable[[int], float]:
    """Milliseconds of one SGD step (the loop's settings) over the model's parameters."""
    model = build(s, r).train()
    opt = torch.optim.SGD(model.parameters(), lr=r.train.lr, momentum=r.train.momentum,
                          nesterov=r.train.momentum > 0, weight_decay=r.train.weight_decay, **sgd_kw)
    x = torch.zeros((r.train.batch_size, *s.ds.in_shape), device=s.dev)
    F.cross_entropy(model(x), torch.zeros(len(x), dtype=torch.long, device=s.dev)).backward()

    def run(iters: int) -> float:
        sync(s.dev)
        t0 = time.perf_counter()
        for _ in range(iters):
            opt.step()
        sync(s.dev)
        return 1000 * (time.perf_counter() - t0) / iters
    return run


def eval_seconds(s: Setup, r: Role, batch: int) -> Callable[[int], float]:
    """Seconds of the per-epoch evaluation kd.train.loop.fit does (validation and test splits), with
    kd.train.loop.predict at this batch size (the argument is unused: an evaluation is one pass)."""
    model = build(s, r)
    n_val, n_test = len(s.ds.val), len(s.ds.test)
    data = subset(s.ds, 1, max(n_val, n_test))

    def run(_: int) -> float:
        sync(s.dev)
        t0 = time.perf_counter()
        loop.predict(model, data.val, data, batch)
        loop.predict(model, data.test, data, batch)
        sync(s.dev)
        return time.perf_counter() - t0
    return run
