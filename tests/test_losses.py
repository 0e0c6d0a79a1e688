"""The distillation loss pinned to Hinton et al. (2015), eq. 2 and its stated properties."""

import math
import statistics
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from kd import losses, params
from kd.losses import distillation_loss, soft_loss
from tests.conftest import tiny_params


def _grad(s, t, y, T, alpha):
    s = s.clone().requires_grad_(True)
    distillation_loss(s, t, y, T, alpha).backward()
    return s.grad


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(8, 10, generator=g, dtype=torch.float64) * 3
    t = torch.randn(8, 10, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 10, (8,), generator=g)
    return s, t, y


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0, 20.0])
def test_soft_gradient_is_T_times_probability_gap_over_batch(batch, T):
    s, t, y = batch
    expected = T * (F.softmax(s / T, 1) - F.softmax(t / T, 1)) / len(s)
    torch.testing.assert_close(_grad(s, t, y, T, alpha=1.0), expected)


def test_alpha_zero_is_plain_cross_entropy(batch):
    s, t, y = batch
    torch.testing.assert_close(distillation_loss(s, t, y, 4.0, 0.0), F.cross_entropy(s, y))


def test_identical_logits_give_zero_soft_loss(batch):
    s, _, y = batch
    assert float(soft_loss(s, s.clone(), 4.0)) == pytest.approx(0.0, abs=1e-12)
    assert float(distillation_loss(s, s.clone(), y, 4.0, 1.0)) == pytest.approx(0.0, abs=1e-12)


def test_high_temperature_gradient_approaches_logit_matching(batch):
    s, t, y = batch
    s, t = s - s.mean(1, keepdim=True), t - t.mean(1, keepdim=True)  # zero-mean logits
    n, classes = s.shape
    matching = (s - t) / (classes * n)
    err = {T: (_grad(s, t, y, T, 1.0) - matching).abs().max().item() for T in (10.0, 100.0, 1000.0)}
    assert err[1000.0] < 1e-2 * matching.abs().max().item()
    # The gap is O(1/T): ten times the temperature, a tenth of the distance.
    assert err[100.0] / err[1000.0] == pytest.approx(10, rel=0.05)
    assert err[10.0] > err[100.0]


def test_batchmean_not_mean_golden_value():
    # Two images, three classes: a hand-checkable value of the soft term at T = 2.
    s = torch.tensor([[1.0, 0.0, -1.0], [0.0, 2.0, 0.0]], dtype=torch.float64)
    t = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    p = F.softmax(t / 2, 1)
    kl_sum = (p * (p.log() - F.log_softmax(s / 2, 1))).sum()
    expected = 4 * kl_sum / 2  # T^2 * KL summed over classes, averaged over the batch of 2
    assert float(soft_loss(s, t, 2.0)) == pytest.approx(float(expected), rel=1e-12)
    # The same value computed by hand with math.exp, outside torch:
    assert float(soft_loss(s, t, 2.0)) == pytest.approx(0.4635697686, rel=1e-8)


def test_mixture_weights_soft_and_hard_terms(batch):
    s, t, y = batch
    want = 0.3 * soft_loss(s, t, 3.0) + 0.7 * F.cross_entropy(s, y)
    torch.testing.assert_close(distillation_loss(s, t, y, 3.0, 0.3), want)


# ---- The successors: DKD, LS, DIST (kd/losses.py), each against its paper's formula computed
# here in plain Python floats, then against the properties that define it.

def _cfg(**distill):
    raw = tiny_params()
    raw["distill"].update(distill)
    return params.validate(raw).distill


def _softmax(row, T):
    e = [math.exp(v / T) for v in row]
    return [v / sum(e) for v in e]


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True) if a > 0)


def _reference_dkd(s, t, y, T, a, b):
    """Zhao et al. (2022) eqs. 1-7 as written: b = (p_target, 1 - p_target), p_hat = the
    probabilities among the other classes renormalised; a * T^2 KL(b) + b * T^2 KL(p_hat)."""
    total = 0.0
    for s_row, t_row, label in zip(s, t, y, strict=True):
        ps, pt = _softmax(s_row, T), _softmax(t_row, T)
        bs, bt = [ps[label], 1 - ps[label]], [pt[label], 1 - pt[label]]
        hs = [v / (1 - ps[label]) for i, v in enumerate(ps) if i != label]
        ht = [v / (1 - pt[label]) for i, v in enumerate(pt) if i != label]
        total += T * T * (a * _kl(bt, bs) + b * _kl(ht, hs))
    return total / len(s)


def _reference_ls(s, t, T):
    """Sun et al. (2024): KD at base temperature T on each row's z-scores (sample std)."""
    def z(row):
        return [(v - statistics.fmean(row)) / statistics.stdev(row) for v in row]
    return T * T * statistics.fmean(_kl(_softmax(z(tr), T), _softmax(z(sr), T))
                                    for sr, tr in zip(s, t, strict=True))


def _reference_dist(s, t, T, beta, gamma):
    """Huang et al. (2022): T^2 (beta (1 - mean over images of corr(p_s[i], p_t[i])) + gamma (1 -
    mean over classes of corr(p_s[:, c], p_t[:, c])))."""
    ps, pt = [_softmax(r, T) for r in s], [_softmax(r, T) for r in t]
    inter = 1 - statistics.fmean(statistics.correlation(a, b) for a, b in zip(ps, pt, strict=True))
    cols = range(len(ps[0]))
    intra = 1 - statistics.fmean(statistics.correlation([r[c] for r in ps], [r[c] for r in pt])
                                 for c in cols)
    return T * T * (beta * inter + gamma * intra)


GOLDEN_S = [[1.0, 0.0, -1.0, 0.5], [0.0, 2.0, 0.0, -0.5], [0.3, -1.2, 2.2, 0.1]]
GOLDEN_T = [[2.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, -1.0], [-0.4, 0.8, 3.0, 0.0]]
GOLDEN_Y = [0, 1, 2]


def _golden():
    as_t = partial(torch.tensor, dtype=torch.float64)
    return as_t(GOLDEN_S), as_t(GOLDEN_T), torch.tensor(GOLDEN_Y)


@pytest.mark.parametrize("T, a, b", [(1.0, 1.0, 8.0), (4.0, 1.0, 8.0), (2.0, 0.5, 2.0)])
def test_dkd_equals_its_paper_formula(T, a, b):
    s, t, y = _golden()
    got = losses.dkd(s, t, y, T, _cfg(loss="dkd", dkd_alpha=a, dkd_beta=b, dkd_warmup=0), epoch=1)
    assert float(got) == pytest.approx(_reference_dkd(GOLDEN_S, GOLDEN_T, GOLDEN_Y, T, a, b), rel=1e-10)


def test_dkd_golden_value():
    s, t, y = _golden()  # frozen from _reference_dkd, outside torch
    got = losses.dkd(s, t, y, 4.0, _cfg(loss="dkd", dkd_alpha=1.0, dkd_beta=8.0, dkd_warmup=0), 1)
    assert float(got) == pytest.approx(GOLDEN["dkd"], rel=1e-9)


def test_ls_equals_its_paper_formula_and_golden_value():
    s, t, _ = _golden()
    got = float(losses.ls(s, t, None, 2.0, _cfg(loss="ls"), 1))
    assert got == pytest.approx(_reference_ls(GOLDEN_S, GOLDEN_T, 2.0), rel=1e-6)  # EPS in the std
    assert got == pytest.approx(GOLDEN["ls"], rel=1e-6)


@pytest.mark.parametrize("T, beta, gamma", [(1.0, 1.0, 1.0), (4.0, 2.0, 2.0), (2.0, 1.0, 0.0)])
def test_dist_equals_its_paper_formula(T, beta, gamma):
    s, t, _ = _golden()
    got = losses.dist(s, t, None, T, _cfg(loss="dist", dist_beta=beta, dist_gamma=gamma), 1)
    # rel 1e-5: the authors' 1e-8 guard in the correlation's denominator, which matters where the
    # centred probabilities are small (T = 4 on four classes: norms near 1e-2)
    assert float(got) == pytest.approx(_reference_dist(GOLDEN_S, GOLDEN_T, T, beta, gamma), rel=1e-5)


def test_dist_golden_value():
    s, t, _ = _golden()
    got = losses.dist(s, t, None, 1.0, _cfg(loss="dist", dist_beta=1.0, dist_gamma=1.0), 1)
    assert float(got) == pytest.approx(GOLDEN["dist"], rel=1e-6)


# The three losses' values on GOLDEN_S/T/Y, from the pure-Python references above (dkd at T = 4,
# alpha 1, beta 8; ls at T = 2; dist at T = 1, beta = gamma = 1).
GOLDEN = {"dkd": 2.7114969720745, "ls": 0.3318755916275, "dist": 0.4795078508985}


def test_golden_values_are_the_references():
    dkd = _reference_dkd(GOLDEN_S, GOLDEN_T, GOLDEN_Y, 4.0, 1.0, 8.0)
    assert dkd == pytest.approx(GOLDEN["dkd"], rel=1e-9)
    assert _reference_ls(GOLDEN_S, GOLDEN_T, 2.0) == pytest.approx(GOLDEN["ls"], rel=1e-9)
    assert _reference_dist(GOLDEN_S, GOLDEN_T, 1.0, 1.0, 1.0) == pytest.approx(GOLDEN["dist"], rel=1e-9)


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_kd_decomposes_into_tckd_plus_weighted_nckd(batch, T):
    """Zhao et al. eq. 5, per image: KD = TCKD + (1 - p_target of the teacher) * NCKD."""
    s, t, y = batch
    kd_rows = T * T * (F.softmax(t / T, 1) * (F.log_softmax(t / T, 1) - F.log_softmax(s / T, 1))).sum(1)
    p_target = F.softmax(t / T, 1).gather(1, y[:, None]).squeeze(1)
    torch.testing.assert_close(kd_rows, losses.tckd(s, t, y, T) + (1 - p_target) * losses.nckd(s, t, y, T))
    # and with DKD's weights at (1, 1 - p) it is KD itself, batch-averaged
    assert float(((losses.tckd(s, t, y, T) + (1 - p_target) * losses.nckd(s, t, y, T))).mean()) == \
        pytest.approx(float(soft_loss(s, t, T)), rel=1e-10)


def test_dkd_terms_vanish_separately(batch):
    s, t, y = batch
    # same target probability, other non-target shape: TCKD 0, NCKD not
    t2 = s.clone()
    others = ~F.one_hot(y, s.shape[1]).bool()
    t2[others] = torch.flip(s[others].view(len(s), -1), [1]).reshape(-1)  # permute non-targets
    assert losses.tckd(s, t2, y, 2.0).abs().max() < 1e-12
    assert (losses.nckd(s, t2, y, 2.0) > 1e-6).any()
    # same non-target shape (a shift), other target logit: NCKD 0, TCKD not
    t3 = s + 1.0
    t3[~others] += 2.0
    assert losses.nckd(s, t3, y, 2.0).abs().max() < 1e-12
    assert (losses.tckd(s, t3, y, 2.0) > 1e-6).all()


def test_dkd_warms_up_linearly():
    s, t, y = _golden()
    full = losses.dkd(s, t, y, 4.0, _cfg(loss="dkd", dkd_warmup=0), epoch=1)
    cfg = _cfg(loss="dkd", dkd_warmup=4)
    for epoch, share in ((1, 0.25), (2, 0.5), (4, 1.0), (9, 1.0)):
        torch.testing.assert_close(losses.dkd(s, t, y, 4.0, cfg, epoch), share * full)


@pytest.mark.parametrize("scale, shift", [(0.1, 0.0), (3.0, -7.0), (25.0, 100.0)])
def test_ls_is_invariant_to_shifting_and_scaling_either_side(batch, scale, shift):
    s, t, y = batch
    cfg = _cfg(loss="ls")
    base = losses.ls(s, t, y, 2.0, cfg, 1)
    torch.testing.assert_close(losses.ls(scale * s + shift, t, y, 2.0, cfg, 1), base, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(losses.ls(s, scale * t + shift, y, 2.0, cfg, 1), base, rtol=1e-6, atol=1e-9)
    # plain KD is not: the student must match the teacher's range
    assert abs(float(soft_loss(scale * s + shift, t, 2.0) - soft_loss(s, t, 2.0))) > 1e-3


def test_ls_is_zero_for_an_affine_student_and_kd_is_not(batch):
    _, t, y = batch
    s = 0.2 * t + 5.0
    assert float(losses.ls(s, t, y, 2.0, _cfg(loss="ls"), 1)) == pytest.approx(0.0, abs=1e-9)
    assert float(soft_loss(s, t, 2.0)) > 0.1


# DIST's "zero": 1 - |a|^2 / (|a|^2 + 1e-8) per correlation, times T^2; a class's centred
# probabilities over 8 images can have |a|^2 near 1e-3, so up to ~1e-5 remains.
DIST_ZERO = 1e-4


def test_dist_is_zero_for_probabilities_affine_in_the_teachers(batch):
    """Pearson correlation ignores positive affine maps: DIST is 0 when the student's logits shift
    the teacher's (any shift per image), or when its probabilities are a * p_t + (1 - a) / K (the
    teacher's mixed with the uniform, a valid distribution), where KD is not."""
    _, t, y = batch
    T, cfg = 2.0, _cfg(loss="dist", dist_beta=1.0, dist_gamma=1.0)
    shifted = t + torch.arange(len(t), dtype=t.dtype)[:, None]
    assert float(losses.dist(shifted, t, y, T, cfg, 1)) == pytest.approx(0.0, abs=DIST_ZERO)
    mixed = 0.6 * F.softmax(t / T, 1) + 0.4 / t.shape[1]
    s = T * mixed.log()
    assert float(losses.dist(s, t, y, T, cfg, 1)) == pytest.approx(0.0, abs=DIST_ZERO)
    assert float(soft_loss(s, t, T)) > 1e-3
    # and it does see a student that reverses the teacher's preferences
    assert float(losses.dist(-t, t, y, T, cfg, 1)) > 1.0


@pytest.mark.parametrize("loss", ["kd", "dkd", "ls", "dist"])
def test_every_loss_mixes_alpha_with_cross_entropy_and_trains(batch, loss):
    s, t, y = batch
    cfg = _cfg(loss=loss)
    soft = losses.SOFT[loss](s, t, y, 3.0, cfg, 1)
    torch.testing.assert_close(distillation_loss(s, t, y, 3.0, 0.3, cfg=cfg),
                               0.3 * soft + 0.7 * F.cross_entropy(s, y))
    torch.testing.assert_close(distillation_loss(s, t, y, 3.0, 1.0, cfg=cfg), soft)
    student = s.clone().requires_grad_(True)
    distillation_loss(student, t, y, 3.0, 1.0, cfg=cfg).backward()
    assert student.grad.isfinite().all() and student.grad.abs().sum() > 0
    # a student equal to its teacher has nothing left to learn from it
    assert float(losses.SOFT[loss](t, t, y, 3.0, cfg, 1)) == pytest.approx(
        0.0, abs=DIST_ZERO if loss == "dist" else 1e-9)


def test_kd_by_name_is_hintons_loss_bit_for_bit(batch):
    s, t, y = batch
    s, t = s.float(), t.float()
    assert torch.equal(distillation_loss(s, t, y, 2.0, 0.9, cfg=_cfg(loss="kd")),
                       distillation_loss(s, t, y, 2.0, 0.9))


def test_every_allowed_loss_is_written():
    assert set(losses.SOFT) == set(params.LOSSES)
