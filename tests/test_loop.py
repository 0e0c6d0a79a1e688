"""The optimiser and schedule the training loop builds: knobs mean what they say."""

import pytest
import torch
from torch import nn

from kd.loop import optimizer
from kd.params import Train


def train_cfg(momentum: float) -> Train:
    return Train(epochs=2, batch_size=8, lr=0.1, momentum=momentum, weight_decay=0.0, shift=0,
                 flip=False, grad_clip=0.0, mixup=0.0)


def run_steps(momentum: float, steps: int = 6) -> tuple[torch.optim.SGD, list[float]]:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    opt, sched = optimizer(model, train_cfg(momentum), total_steps=steps)
    seen = []
    for _ in range(steps):
        seen.append(opt.param_groups[0]["momentum"])
        opt.zero_grad()
        model(torch.randn(8, 4)).square().mean().backward()
        opt.step()
        sched.step()
    return opt, seen


def test_momentum_zero_is_plain_sgd():
    # One-cycle's default would cycle momentum between 0.85 and 0.95 even when it is set to 0.
    opt, seen = run_steps(0.0)
    assert seen == [0.0] * 6
    assert all(opt.state[p].get("momentum_buffer") is None for p in opt.param_groups[0]["params"])
    assert opt.param_groups[0]["nesterov"] is False


@pytest.mark.parametrize("momentum", [0.5, 0.9])
def test_momentum_stays_as_set_while_the_learning_rate_cycles(momentum):
    opt, seen = run_steps(momentum)
    assert seen == [momentum] * 6
    assert opt.param_groups[0]["nesterov"] is True
