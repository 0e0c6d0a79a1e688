"""The training loop: the optimiser and schedule it builds (knobs mean what they say), the epoch
it keeps, and the seeds it takes."""

from dataclasses import replace

import pytest
import torch
from torch import nn

from kd.config.params import Train, validate
from kd.data import splits
from kd.train import loop, nets, transfer
from kd.train.loop import optimizer
from tests.conftest import tiny_params


def train_cfg(momentum: float) -> Train:
    return Train(epochs=2, batch_size=8, lr=0.1, momentum=momentum, weight_decay=0.0, shift=0,
                 flip=False, grad_clip=0.0, mixup=0.0)


def torch_optim(model: nn.Module, cfg: Train, total_steps: int):
    """What the loop stepped with before kd/train/sgd.py: torch.optim's SGD and OneCycleLR."""
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          nesterov=cfg.momentum > 0, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total_steps,
                                                cycle_momentum=False)
    return opt, sched


def weights(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def train(arch: str, cfg: Train, steps: int, reference: bool) -> tuple[torch.Tensor, list[float]]:
    """`steps` steps on random batches with the loop's optimiser (or torch.optim's): the final
    weights and the learning rate each step took."""
    torch.manual_seed(0)
    model = nets.build(arch, (1, 8, 8), 3, dropout=0.1)
    opt, sched = torch_optim(model, cfg, steps) if reference else (optimizer(model, cfg, steps),
                                                                   None)
    gen = torch.Generator().manual_seed(1)
    lrs = []
    for _ in range(steps):
        x, y = torch.randn(16, 1, 8, 8, generator=gen), torch.randint(0, 3, (16,), generator=gen)
        lrs.append(opt.param_groups[0]["lr"] if reference else opt.lr)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if reference:
            sched.step()
    lrs.append(sched.get_last_lr()[0] if reference else opt.lr)  # what the epoch's row logs
    return weights(model), lrs


@pytest.mark.parametrize("arch", ["mlp:16-16", "cnn:4-8"])
@pytest.mark.parametrize("momentum, weight_decay", [(0.0, 0.0), (0.5, 0.0), (0.9, 5e-4)])
def test_the_loops_sgd_writes_the_bytes_of_torch_optim(arch, momentum, weight_decay):
    # Same weights after a whole one-cycle run of 10 steps (warm-up and annealing), whichever
    # momentum and weight decay: the committed models do not move with the optimiser's code.
    cfg = replace(train_cfg(momentum), weight_decay=weight_decay)
    torch.manual_seed(0)
    start = weights(nets.build(arch, (1, 8, 8), 3))
    ours, our_lrs = train(arch, cfg, 10, reference=False)
    theirs, their_lrs = train(arch, cfg, 10, reference=True)
    assert not torch.equal(ours, start)  # the steps moved the weights
    assert torch.equal(ours, theirs)
    assert our_lrs == their_lrs  # every step's learning rate to the last bit
    assert max(our_lrs) == cfg.lr and our_lrs[0] == pytest.approx(cfg.lr / 25)


def test_momentum_zero_is_plain_sgd():
    # One-cycle's default would cycle momentum between 0.85 and 0.95 even when it is set to 0.
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    opt = optimizer(model, train_cfg(0.0), total_steps=6)
    for _ in range(6):
        before = model.weight.detach().clone()
        lr = opt.lr
        opt.zero_grad()
        model(torch.randn(8, 4)).square().mean().backward()
        grad = model.weight.grad.clone()
        opt.step()
        assert torch.equal(model.weight.detach(), before.add(grad, alpha=-lr))
    assert opt.buffers == [None, None] and opt.nesterov is False


class Scaled(nn.Module):
    """Logits exp(s) * (the first `classes` pixels): a positive scale never changes the argmax,
    so every epoch's validation accuracy is the same, while training moves s (the cross-entropy
    depends on it)."""

    def __init__(self, classes: int):
        super().__init__()
        self.s = nn.Parameter(torch.zeros(()))
        self.classes = classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.s.exp() * x.flatten(1)[:, :self.classes]


def tiny_dataset(n: int = 64, classes: int = 4) -> splits.Dataset:
    gen = torch.Generator().manual_seed(0)

    def split() -> splits.Split:
        return splits.Split(torch.randint(0, 256, (n, 1, 4, 4), dtype=torch.uint8, generator=gen),
                          torch.randint(0, classes, (n,), generator=gen))

    return splits.Dataset("tiny", split(), split(), split(), tuple(map(str, range(classes))),
                        torch.tensor([0.5]), torch.tensor([0.3]))


class Recorder:
    """A `run` for loop.fit: the model's s after each epoch."""

    def __init__(self, model: Scaled):
        self.model, self.s = model, {}

    def log_epoch(self, row: dict, epoch: int) -> None:
        self.s[epoch] = self.model.s.item()


def test_of_tied_validation_accuracies_the_first_epoch_is_kept():
    """The earliest epoch reaching the best validation accuracy: a later one that only ties it
    was not chosen by anything (kd/train/loop.py's docstring; best_epoch in the metrics files)."""
    torch.manual_seed(0)
    model, ds = Scaled(4), tiny_dataset()
    cfg = replace(train_cfg(0.9), epochs=3, batch_size=16, lr=0.5)
    run = Recorder(model)
    fit = loop.fit(model, ds, cfg, seed=0, run=run)
    assert len({row["val_acc"] for row in fit.history}) == 1  # every epoch ties
    assert len(set(run.s.values())) == 3  # ... with other weights each epoch
    assert fit.best_epoch == 1
    assert model.s.item() == run.s[1]  # the model holds the first epoch's weights


def test_the_largest_seeds_params_allow_run_through_the_code_that_seeds():
    """seed seeds torch's and numpy's generators in the loop and the transfer set's sample;
    data.split_seed the validation split's torch generator (torch takes at most 2**64 - 1)."""
    raw = tiny_params()
    raw["seed"], raw["data"]["split_seed"] = 2**63 - 1, 2**64 - 1
    p = validate(raw)  # the highest values it allows (tests/test_params.py: one more is refused)
    ds = tiny_dataset()
    train, val = splits.split_off_validation(ds.train.x, ds.train.y, 0.25, p.data.split_seed)
    assert len(train) + len(val) == len(ds.train)
    assert len(transfer.transfer_indices(ds.train.y, (), (), 0.5, p.seed)) < len(ds.train)
    cfg = replace(train_cfg(0.9), epochs=1, batch_size=16, mixup=0.5)
    fit = loop.fit(Scaled(4), ds, cfg, seed=p.seed)  # mixup: numpy's generator too
    assert fit.best_epoch == 1


def test_a_params_file_changed_mid_training_stops_the_loop_after_that_epoch(tmp_path, monkeypatch):
    """A second `dvc exp run` rewrote params.yaml while a stage DVC runs trained: the loop stops
    at the end of the epoch in which it changed, not after its last epoch (nothing it trains could
    be registered: kd/process/params_watch.py). Run by hand, it trains on."""
    from kd.process import params_watch

    params = tmp_path / "params.yaml"
    params.write_text("T: 4\n")
    monkeypatch.setattr(params_watch, "_loaded", {})
    monkeypatch.setattr(params_watch.interrupt, "dvc_process", lambda: "boot:1:100:5")
    params_watch.loaded(params)  # the stage read it (no check stage recorded it: nothing to compare)
    model = Scaled(4)
    run = Recorder(model)

    def log_epoch(row: dict, epoch: int) -> None:
        run.s[epoch] = model.s.item()
        if epoch == 2:
            params.write_text("T: 5\n")

    run.log_epoch = log_epoch
    cfg = replace(train_cfg(0.9), epochs=50, batch_size=16)
    with pytest.raises(params_watch.ParamsChanged, match="changed while this stage ran"):
        loop.fit(model, tiny_dataset(), cfg, seed=0, run=run)
    assert sorted(run.s) == [1, 2]

    by_hand = Scaled(4)
    run = Recorder(by_hand)
    monkeypatch.setattr(params_watch.interrupt, "dvc_process", lambda: None)
    fit = loop.fit(by_hand, tiny_dataset(), replace(cfg, epochs=3), seed=0, run=run)
    assert len(fit.history) == 3  # the file differs from what was read, and training went on

