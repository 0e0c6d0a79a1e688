"""SGD with (Nesterov) momentum under a one-cycle learning rate: torch.optim's arithmetic, without
torch.optim.

Building any torch.optim optimiser imports torch._dynamo (its methods are wrapped to keep
torch.compile out of them): 1.2 s of CPU in every training process, a sixth of a small stage's
whole run and the largest part of its start-up (docs/performance.md). This project compiles
nothing, so its training loop steps with these few lines instead: the operations of
torch.optim.SGD's for-loop step (foreach=False, the CPU's default) in its order, at the learning
rates torch.optim.lr_scheduler.OneCycleLR computes with its defaults and cycle_momentum=False.
The same bytes, step after step (tests/test_loop.py holds them against torch.optim), so no
checkpoint moves.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

# OneCycleLR's defaults: the first 30% of the steps warm up from max_lr / 25 to max_lr, the rest
# anneal to max_lr / 25 / 10,000, both along a half cosine.
WARM_UP, DIV, FINAL_DIV = 0.3, 25.0, 1e4


class OneCycle:
    """The learning rate of each step, 0-based, as OneCycleLR(max_lr, total_steps) sets it."""

    def __init__(self, max_lr: float, total_steps: int):
        self.initial = max_lr / DIV
        self.max = max_lr
        self.min = self.initial / FINAL_DIV
        self.peak = float(WARM_UP * total_steps) - 1  # the warm-up's last step
        self.last = total_steps - 1

    def lr(self, step: int) -> float:
        if step <= self.peak:
            start, end, pct = self.initial, self.max, (step - 0.0) / (self.peak - 0.0)
        else:
            start, end, pct = self.max, self.min, (step - self.peak) / (self.last - self.peak)
        cos_out = math.cos(math.pi * pct) + 1  # OneCycleLR's own expression, term by term
        return end + (start - end) / 2.0 * cos_out


class SGD:
    """`step()` updates every parameter that has a gradient; `zero_grad()` drops the gradients."""

    def __init__(self, params: Iterable[torch.nn.Parameter], schedule: OneCycle, momentum: float,
                 nesterov: bool, weight_decay: float):
        self.params = list(params)
        self.schedule = schedule
        self.momentum, self.nesterov, self.weight_decay = momentum, nesterov, weight_decay
        self.buffers: list[torch.Tensor | None] = [None] * len(self.params)  # momentum's
        self.steps = 0

    @property
    def lr(self) -> float:
        """The learning rate of the next step (OneCycleLR's get_last_lr after as many steps)."""
        return self.schedule.lr(self.steps)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        lr = self.lr
        for i, param in enumerate(self.params):
            if param.grad is None:
                continue
            grad = param.grad
            if self.weight_decay != 0:
                grad = grad.add(param, alpha=self.weight_decay)
            if self.momentum != 0:
                buf = self.buffers[i]
                if buf is None:
                    buf = self.buffers[i] = grad.detach().clone()
                else:
                    buf.mul_(self.momentum).add_(grad, alpha=1)  # torch's 1 - dampening (0)
                grad = grad.add(buf, alpha=self.momentum) if self.nesterov else buf
            param.add_(grad, alpha=-lr)
        self.steps += 1
