"""Mixup and consistent teaching (Beyer et al. 2022): the mixed batch, its labels, the online
teacher's input, and function matching without labels."""

import numpy as np
import pytest
import torch

from kd import losses
from kd.config.params import Train
from kd.data import splits
from kd.train import loop
from kd.train.cross_entropy import hard_loss
from stages import distill
from tests.conftest import project, run_stage, tiny_params, write_params

TRAIN = dict(epochs=1, batch_size=32, lr=0.05, momentum=0.9, weight_decay=0.0, shift=1,
             flip=True, grad_clip=0.0, mixup=1.0)


def test_mixup_is_a_convex_combination_with_its_drawn_weights():
    x = torch.randn(64, 1, 8, 8)
    mixed, partner, lam = splits.mixup(x, 0.4, torch.Generator().manual_seed(0),
                                     np.random.default_rng(0))
    assert sorted(partner.tolist()) == list(range(64))  # a permutation of the batch
    assert ((lam >= 0) & (lam <= 1)).all() and lam.std() > 0  # one weight per image
    expected = lam.view(-1, 1, 1, 1) * x + (1 - lam.view(-1, 1, 1, 1)) * x[partner]
    torch.testing.assert_close(mixed, expected)
    # Beta(0.4, 0.4) piles weights near 0 and 1; Beta(1, 1) is uniform
    big = splits.mixup(torch.zeros(20000, 1), 1.0, torch.Generator().manual_seed(1),
                     np.random.default_rng(1))[2]
    assert abs(float(big.mean()) - 0.5) < 0.01 and abs(float(big.var()) - 1 / 12) < 0.005


def test_batch_keeps_each_images_label_with_its_own_part():
    ds_x = torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1).expand(40, 1, 2, 2).contiguous()
    split = splits.Split(ds_x, torch.arange(40) % 10)
    dset = splits.Dataset("t", split, split, split, tuple("0123456789"), torch.zeros(1),
                        torch.ones(1) / 255)  # normalise = identity on the pixel values
    cfg = Train(**{**TRAIN, "shift": 0, "flip": False})
    idx = torch.tensor([3, 17, 25, 38])
    b = loop.batch_inputs(split, idx, dset, cfg, torch.Generator().manual_seed(0),
                          np.random.default_rng(0))
    own, other = idx.float(), idx[b.partner].float()  # pixel value = row number
    torch.testing.assert_close(b.x[:, 0, 0, 0], b.lam * own + (1 - b.lam) * other)
    assert b.partner_y.tolist() == (idx[b.partner] % 10).tolist()
    logits = torch.randn(4, 10)
    per = torch.nn.functional.cross_entropy
    want = (b.lam * per(logits, b.y, reduction="none")
            + (1 - b.lam) * per(logits, b.partner_y, reduction="none")).mean()
    torch.testing.assert_close(hard_loss(logits, b.y, b.partner_y, b.lam), want)


def test_a_rank_share_of_a_mixed_batch_keeps_each_images_partner_label_and_weight():
    """Under torchrun the whole batch is mixed, then each rank takes its rows (kd/process/distributed.py):
    a partner may sit in another rank's share, and its label must come along."""
    ds_x = torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1).expand(40, 1, 2, 2).contiguous()
    split = splits.Split(ds_x, torch.arange(40) % 10)
    dset = splits.Dataset("t", split, split, split, tuple("0123456789"), torch.zeros(1),
                        torch.ones(1) / 255)
    idx = torch.tensor([3, 17, 25, 38, 1, 9, 30, 22])
    whole = loop.batch_inputs(split, idx, dset, Train(**{**TRAIN, "shift": 0, "flip": False}),
                              torch.Generator().manual_seed(0), np.random.default_rng(0))
    part = whole.rows(slice(4, 8))
    own, other = idx[4:].float(), idx[whole.partner][4:].float()  # pixel value = row number
    torch.testing.assert_close(part.x[:, 0, 0, 0], part.lam * own + (1 - part.lam) * other)
    assert torch.equal(part.idx, idx[4:]) and torch.equal(part.lam, whole.lam[4:])
    assert part.partner_y.tolist() == (idx[whole.partner][4:] % 10).tolist()


def test_mixup_off_draws_nothing_so_default_runs_are_unchanged():
    split = splits.Split(torch.randint(0, 255, (16, 1, 4, 4), dtype=torch.uint8), torch.zeros(16).long())
    dset = splits.Dataset("t", split, split, split, ("a",), torch.zeros(1), torch.ones(1))
    gen, rng = torch.Generator().manual_seed(0), np.random.default_rng(0)
    cfg = Train(**{**TRAIN, "shift": 0, "flip": False, "mixup": 0.0})
    b = loop.batch_inputs(split, torch.arange(8), dset, cfg, gen, rng)
    assert b.partner is None and b.lam is None and b.partner_y is None
    # neither random stream moved: the same draws follow as without mixup in the code at all
    assert torch.equal(gen.get_state(), torch.Generator().manual_seed(0).get_state())
    assert rng.random() == np.random.default_rng(0).random()


def test_function_matching_never_reads_a_label():
    s, t = torch.randn(8, 10, requires_grad=True), torch.randn(8, 10)
    bad = torch.full((8,), -1)  # cross-entropy would fail on these
    kd = losses.get("kd")
    assert losses.distillation_loss(s, t, bad, kd, {"T": 4.0, "alpha": 1.0}).isfinite()
    with pytest.raises((IndexError, RuntimeError)):
        losses.distillation_loss(s, t, bad, kd, {"T": 4.0, "alpha": 0.9})


def test_function_matching_trains_the_same_on_an_unlabelled_transfer_set(workdir, monkeypatch):
    """alpha = 1 with mixup on digits: labels set to -1 give the very same student."""
    monkeypatch.setenv("KD_TRACKING", "off")
    raw = tiny_params()
    raw["alpha"] = 1.0
    raw["distill"].update(shift=1, flip=True, mixup=1.0)
    write_params(workdir, raw)
    for name in ("download", "teacher", "soft_targets", "distill"):
        __import__(f"stages.{name}", fromlist=["main"]).main([])
    labelled = torch.load(workdir / "model/distilled.pt", weights_only=True)["state_dict"]
    real_load = splits.load

    def unlabelled(folder):
        ds = real_load(folder)
        ds.train = splits.Split(ds.train.x, torch.full_like(ds.train.y, -1))
        return ds

    monkeypatch.setattr(distill.splits, "load", unlabelled)
    distill.main([])
    again = torch.load(workdir / "model/distilled.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(labelled[k], again[k]) for k in labelled)


@pytest.fixture(scope="module")
def taught(tmp_path_factory):
    """A digits folder with its teacher and cached soft targets (tracking off), to distill in."""
    with project(tmp_path_factory, "taught", KD_TRACKING="off") as (folder, _):
        for name in ("download", "teacher", "soft_targets"):
            run_stage(name)
        yield folder


def distill_seen(folder, monkeypatch, **augment) -> dict[str, list[torch.Tensor]]:
    """Run the distill stage with these `distill.*` values; the input tensor of each call of the
    teacher, and of each of the student's training steps."""
    raw = tiny_params()
    raw["distill"].update(augment)
    write_params(folder, raw)
    seen: dict[str, list[torch.Tensor]] = {"teacher": [], "student": []}

    def record(role: str, model: torch.nn.Module) -> torch.nn.Module:
        def hook(m, inp):
            if role == "teacher" or m.training:  # the student's training steps, not evaluation
                seen[role].append(inp[0])
        model.register_forward_pre_hook(hook)
        return model

    load_checkpoint, build_model = distill.steps.load_checkpoint, distill.steps.build_model
    monkeypatch.setattr(distill.steps, "load_checkpoint", lambda *a: (
        record("teacher", load_checkpoint(*a)[0]), None))
    monkeypatch.setattr(distill.steps, "build_model", lambda *a: record(
        "student", build_model(*a)))
    distill.main([])
    return seen


# Each augmentation alone: cached logits are the teacher's on the unshifted, unflipped, unmixed
# images, so any one of them makes the teacher run online.
@pytest.mark.parametrize("augment", [{"shift": 1}, {"flip": True}, {"mixup": 0.5},
                                     {"shift": 1, "flip": True, "mixup": 0.5}],
                         ids=["shift", "flip", "mixup", "all"])
def test_online_teacher_gets_exactly_the_students_augmented_input(taught, monkeypatch, augment):
    seen = distill_seen(taught, monkeypatch, **augment)
    n_train = len(torch.load(taught / "data/digits/train.pt", weights_only=True)["y"])
    assert len(seen["teacher"]) == 2 * (n_train // 64)  # every training step of both epochs
    for t_in, s_in in zip(seen["teacher"], seen["student"], strict=True):
        assert t_in is s_in  # the very tensor, not a copy, not another draw


def test_without_augmentation_the_cached_soft_targets_teach(taught, monkeypatch):
    seen = distill_seen(taught, monkeypatch)
    assert seen["teacher"] == [] and len(seen["student"]) > 0  # the teacher is not even loaded
