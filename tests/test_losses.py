"""The distillation loss pinned to Hinton et al. (2015), eq. 2 and its stated properties."""

import math
import statistics
from functools import partial

import pytest
import torch
import torch.nn.functional as F
import yaml

from kd import losses
from kd.config import params
from kd.losses.common import soft_loss
from kd.losses.dkd import nckd, tckd
from tests.conftest import ROOT, tiny_params


def kd_loss(s, t, y, T, alpha):
    """Hinton et al. eq. 2 through the registry: the kd loss at this T and alpha."""
    return losses.distillation_loss(s, t, y, losses.get("kd"), {"T": T, "alpha": alpha})


def _grad(s, t, y, T, alpha):
    s = s.clone().requires_grad_(True)
    kd_loss(s, t, y, T, alpha).backward()
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
    torch.testing.assert_close(kd_loss(s, t, y, 4.0, 0.0), F.cross_entropy(s, y))


def test_identical_logits_give_zero_soft_loss(batch):
    s, _, y = batch
    assert float(soft_loss(s, s.clone(), 4.0)) == pytest.approx(0.0, abs=1e-12)
    assert float(kd_loss(s, s.clone(), y, 4.0, 1.0)) == pytest.approx(0.0, abs=1e-12)


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
    torch.testing.assert_close(kd_loss(s, t, y, 3.0, 0.3), want)


# ---- The successors: DKD, LS, DIST (kd/losses/), each whole loss against its authors' training
# code (mdistiller's DKD, the logit-standardisation repository's KD, DIST's classification code),
# computed here in plain Python floats, then against the properties that define it.

def _cfg(T=7.0, alpha=0.3, **distill):
    """Validated params with these `distill.*` values (kd's T and alpha set to values the other
    losses must ignore)."""
    raw = tiny_params()
    raw.update(T=T, alpha=alpha)
    raw["distill"].update(distill)
    p = params.validate(raw)
    losses.validate(p)
    return p


def _softmax(row, T):
    e = [math.exp(v / T) for v in row]
    return [v / sum(e) for v in e]


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True) if a > 0)


def _ce(s, y):
    """Cross-entropy with the labels, averaged over the batch."""
    return statistics.fmean(-math.log(_softmax(row, 1.0)[label]) for row, label in zip(s, y, strict=True))


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


# The whole losses as the authors' training code adds them up:
def _whole_dkd(s, t, y, ce, a, b, T, warm):  # mdistiller: CE weight * CE + warm-up * DKD
    return ce * _ce(s, y) + warm * _reference_dkd(s, t, y, T, a, b)


def _whole_ls(s, t, y, ce, kd, T):  # their KD distiller, logit-standardised: CE w * CE + KD w * KD
    return ce * _ce(s, y) + kd * _reference_ls(s, t, T)


def _whole_dist(s, t, y, beta, gamma, tau):  # their classification code: CE + 1 * DIST
    return _ce(s, y) + _reference_dist(s, t, tau, beta, gamma)


GOLDEN_S = [[1.0, 0.0, -1.0, 0.5], [0.0, 2.0, 0.0, -0.5], [0.3, -1.2, 2.2, 0.1]]
GOLDEN_T = [[2.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, -1.0], [-0.4, 0.8, 3.0, 0.0]]
GOLDEN_Y = [0, 1, 2]


def _golden():
    as_t = partial(torch.tensor, dtype=torch.float64)
    return as_t(GOLDEN_S), as_t(GOLDEN_T), torch.tensor(GOLDEN_Y)


def _loss(p, s, t, y, epoch=1, partner=None, lam=None):
    """The distill stage's loss under params `p`."""
    loss = losses.get(p.distill.loss)
    return losses.distillation_loss(s, t, y, loss, loss.values(p), epoch=epoch,
                                    epochs=p.distill.epochs, partner_labels=partner, lam=lam)


@pytest.mark.parametrize("ce, a, b, T", [(1.0, 1.0, 8.0, 4.0), (1.0, 1.0, 8.0, 1.0),
                                         (0.5, 0.5, 2.0, 2.0), (0.0, 1.0, 1.0, 4.0)])
def test_dkd_is_the_authors_whole_loss(ce, a, b, T):
    s, t, y = _golden()
    cfg = _cfg(loss="dkd", dkd_ce=ce, dkd_alpha=a, dkd_beta=b, dkd_T=T, dkd_warmup=0.0)
    want = _whole_dkd(GOLDEN_S, GOLDEN_T, GOLDEN_Y, ce, a, b, T, warm=1.0)
    assert float(_loss(cfg, s, t, y)) == pytest.approx(want, rel=1e-10)


def test_dkd_golden_value():
    s, t, y = _golden()  # the shipped recipe but the warm-up, frozen from _whole_dkd outside torch
    cfg = _cfg(loss="dkd", dkd_ce=1.0, dkd_alpha=1.0, dkd_beta=8.0, dkd_T=4.0, dkd_warmup=0.0)
    assert float(_loss(cfg, s, t, y)) == pytest.approx(GOLDEN["dkd"], rel=1e-9)


def test_dkd_warms_up_over_its_share_of_the_epochs():
    """mdistiller: min(epoch / warm-up epochs, 1) times the DKD term, epochs from 1; here the
    warm-up is a share of distill.epochs (20 of 240 = 1/12: 1.25 of 15 epochs)."""
    s, t, y = _golden()
    cfg = _cfg(loss="dkd", dkd_ce=1.0, dkd_alpha=1.0, dkd_beta=8.0, dkd_T=4.0, dkd_warmup=1 / 12,
               epochs=15)
    for epoch, warm in ((1, 0.8), (2, 1.0), (15, 1.0)):
        want = _whole_dkd(GOLDEN_S, GOLDEN_T, GOLDEN_Y, 1.0, 1.0, 8.0, 4.0, warm)
        assert float(_loss(cfg, s, t, y, epoch)) == pytest.approx(want, rel=1e-10)
    cfg = _cfg(loss="dkd", dkd_warmup=0.5, epochs=8)  # 4 epochs: a quarter more each epoch
    no_ce = _cfg(loss="dkd", dkd_ce=0.0, dkd_warmup=0.0, epochs=8)
    full = float(_loss(no_ce, s, t, y))
    ce = float(F.cross_entropy(s, y)) * cfg.distill.knobs["dkd_ce"]
    for epoch, share in ((1, 0.25), (2, 0.5), (4, 1.0), (8, 1.0)):
        assert float(_loss(cfg, s, t, y, epoch)) == pytest.approx(ce + share * full, rel=1e-10)


@pytest.mark.parametrize("ce, kd, T", [(1.0, 9.0, 2.0), (0.1, 9.0, 3.0), (1.0, 1.0, 1.0)])
def test_ls_is_the_authors_whole_loss(ce, kd, T):
    s, t, y = _golden()
    cfg = _cfg(loss="ls", ls_ce=ce, ls_kd=kd, ls_T=T)
    want = _whole_ls(GOLDEN_S, GOLDEN_T, GOLDEN_Y, ce, kd, T)
    assert float(_loss(cfg, s, t, y)) == pytest.approx(want, rel=1e-6)  # EPS in the std


def test_ls_golden_value():
    s, t, y = _golden()
    assert float(_loss(_cfg(loss="ls", ls_ce=1.0, ls_kd=9.0, ls_T=2.0), s, t, y)) == \
        pytest.approx(GOLDEN["ls"], rel=1e-6)


@pytest.mark.parametrize("beta, gamma, tau", [(1.0, 1.0, 1.0), (2.0, 2.0, 4.0), (1.0, 0.0, 2.0)])
def test_dist_is_the_authors_whole_loss(beta, gamma, tau):
    s, t, y = _golden()
    cfg = _cfg(loss="dist", dist_beta=beta, dist_gamma=gamma, dist_tau=tau)
    want = _whole_dist(GOLDEN_S, GOLDEN_T, GOLDEN_Y, beta, gamma, tau)
    # rel 1e-5: the authors' 1e-8 guard in the correlation's denominator, which matters where the
    # centred probabilities are small (tau = 4 on four classes: norms near 1e-2)
    assert float(_loss(cfg, s, t, y)) == pytest.approx(want, rel=1e-5)


def test_dist_golden_value():
    s, t, y = _golden()
    cfg = _cfg(loss="dist", dist_beta=1.0, dist_gamma=1.0, dist_tau=1.0)
    assert float(_loss(cfg, s, t, y)) == pytest.approx(GOLDEN["dist"], rel=1e-6)


# The three whole losses on GOLDEN_S/T/Y, computed once with the pure-Python references above and
# frozen here, so that a change to a reference cannot move them (each is the
# earlier golden value of its distillation term alone, plus the same cross-entropy 0.4384064),
# at its authors' recipe (dkd: CE 1, alpha 1, beta 8, T 4, no warm-up; ls: CE 1, KD 9, T 2; dist: beta =
# gamma = tau = 1).
GOLDEN = {"dkd": 3.1499033583785, "ls": 3.4252867109518, "dist": 0.9179142372025}


def test_every_default_that_departs_from_its_authors_recipe_is_explained():
    """The shipped defaults (conf/config.yaml) against each successor's recipe as its authors' code
    ships it (each Loss's `recipe` in kd/losses/: mdistiller's CIFAR-100 DKD config, 20 of 240
    epochs of warm-up; the logit-standardisation README's CIFAR-100 command; DIST's loss
    defaults). Each knob moved away from its recipe is named, with its value, in docs/results.md's
    list of departures."""
    shipped = yaml.safe_load((ROOT / "conf" / "config.yaml").read_text())["distill"]
    successors = [losses.get(n) for n in losses.names() if not losses.get(n).top_level]
    assert all(set(loss.recipe) == set(loss.knobs) for loss in successors)  # a value for each knob
    recipes = {f"{loss.name}_{k}": v for loss in successors for k, v in loss.recipe.items()}
    assert set(recipes) == {k for k in shipped if k.split("_")[0] in losses.names()}
    doc = (ROOT / "docs" / "results.md").read_text()
    departures = doc[doc.index("### Departures from the authors' recipes"):]
    departures = departures[:departures.index("\n#", 1)]
    for key, recipe in recipes.items():
        if shipped[key] != recipe:
            assert f"`distill.{key}` {shipped[key]:g}" in departures, key


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_kd_decomposes_into_tckd_plus_weighted_nckd(batch, T):
    """Zhao et al. eq. 5, per image: KD = TCKD + (1 - p_target of the teacher) * NCKD."""
    s, t, y = batch
    kd_rows = T * T * (F.softmax(t / T, 1) * (F.log_softmax(t / T, 1) - F.log_softmax(s / T, 1))).sum(1)
    p_target = F.softmax(t / T, 1).gather(1, y[:, None]).squeeze(1)
    torch.testing.assert_close(kd_rows, tckd(s, t, y, T) + (1 - p_target) * nckd(s, t, y, T))
    # and with DKD's weights at (1, 1 - p) it is KD itself, batch-averaged
    assert float(((tckd(s, t, y, T) + (1 - p_target) * nckd(s, t, y, T))).mean()) == \
        pytest.approx(float(soft_loss(s, t, T)), rel=1e-10)


def test_dkd_terms_vanish_separately(batch):
    s, t, y = batch
    # same target probability, other non-target shape: TCKD 0, NCKD not
    t2 = s.clone()
    others = ~F.one_hot(y, s.shape[1]).bool()
    t2[others] = torch.flip(s[others].view(len(s), -1), [1]).reshape(-1)  # permute non-targets
    assert tckd(s, t2, y, 2.0).abs().max() < 1e-12
    assert (nckd(s, t2, y, 2.0) > 1e-6).any()
    # same non-target shape (a shift), other target logit: NCKD 0, TCKD not
    t3 = s + 1.0
    t3[~others] += 2.0
    assert nckd(s, t3, y, 2.0).abs().max() < 1e-12
    assert (tckd(s, t3, y, 2.0) > 1e-6).all()


def _no_ce(loss):
    """A successor with its cross-entropy weighed 0 where it has a weight (dist has none)."""
    return _cfg(loss=loss, **{"dkd": {"dkd_ce": 0.0, "dkd_warmup": 0.0}, "ls": {"ls_ce": 0.0}}
                .get(loss, {}))


@pytest.mark.parametrize("scale, shift", [(0.1, 0.0), (3.0, -7.0), (25.0, 100.0)])
def test_ls_is_invariant_to_shifting_and_scaling_either_side(batch, scale, shift):
    s, t, y = batch
    cfg = _no_ce("ls")
    base = _loss(cfg, s, t, y)
    torch.testing.assert_close(_loss(cfg, scale * s + shift, t, y), base, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(_loss(cfg, s, scale * t + shift, y), base, rtol=1e-6, atol=1e-9)
    # plain KD is not: the student must match the teacher's range
    assert abs(float(soft_loss(scale * s + shift, t, 2.0) - soft_loss(s, t, 2.0))) > 1e-3


def test_ls_is_zero_for_an_affine_student_and_kd_is_not(batch):
    _, t, y = batch
    s = 0.2 * t + 5.0
    assert float(_loss(_no_ce("ls"), s, t, y)) == pytest.approx(0.0, abs=1e-9)
    assert float(soft_loss(s, t, 2.0)) > 0.1


# DIST's "zero": 1 - |a|^2 / (|a|^2 + 1e-8) per correlation, times tau^2; a class's centred
# probabilities over 8 images can have |a|^2 near 1e-3, so up to ~1e-5 remains.
DIST_ZERO = 1e-4


def test_dist_is_zero_for_probabilities_affine_in_the_teachers(batch):
    """Pearson correlation ignores positive affine maps: DIST's term is 0 when the student's logits
    shift the teacher's (any shift per image), or when its probabilities are a * p_t + (1 - a) / K
    (the teacher's mixed with the uniform, a valid distribution), where KD is not."""
    _, t, y = batch
    tau = 2.0
    cfg = _cfg(loss="dist", dist_beta=1.0, dist_gamma=1.0, dist_tau=tau)

    def term(s):  # the whole loss less its cross-entropy
        return float(_loss(cfg, s, t, y) - F.cross_entropy(s, y))
    shifted = t + torch.arange(len(t), dtype=t.dtype)[:, None]
    assert term(shifted) == pytest.approx(0.0, abs=DIST_ZERO)
    mixed = 0.6 * F.softmax(t / tau, 1) + 0.4 / t.shape[1]
    s = tau * mixed.log()
    assert term(s) == pytest.approx(0.0, abs=DIST_ZERO)
    assert float(soft_loss(s, t, tau)) > 1e-3
    # and it does see a student that reverses the teacher's preferences
    assert term(-t) > 1.0


@pytest.mark.parametrize("loss", ["dkd", "ls", "dist"])
def test_every_successor_ignores_kds_T_and_alpha_and_trains(batch, loss):
    s, t, y = batch
    base = _loss(_cfg(loss=loss), s, t, y)
    for T, alpha in ((1.0, 0.0), (20.0, 1.0)):
        torch.testing.assert_close(_loss(_cfg(T, alpha, loss=loss), s, t, y), base)
    cfg = _cfg(loss=loss)
    student = s.clone().requires_grad_(True)
    _loss(cfg, student, t, y).backward()
    assert student.grad.isfinite().all() and student.grad.abs().sum() > 0
    # a student equal to its teacher has nothing left to learn from it but the labels
    torch.testing.assert_close(_loss(cfg, t, t, y),
                               (1.0 if loss == "dist" else cfg.distill.knobs[f"{loss}_ce"])
                               * F.cross_entropy(t, y), atol=DIST_ZERO if loss == "dist" else 1e-9,
                               rtol=0)


def test_mixup_mixes_the_cross_entropy_of_every_loss(batch):
    s, t, y = batch
    partner, lam = y.roll(1), torch.linspace(0.2, 0.9, len(y), dtype=s.dtype)
    mixed_ce = (lam * F.cross_entropy(s, y, reduction="none")
                + (1 - lam) * F.cross_entropy(s, partner, reduction="none")).mean()
    for loss in ("ls", "dist"):
        cfg = _cfg(loss=loss)
        torch.testing.assert_close(_loss(cfg, s, t, y, partner=partner, lam=lam) - _loss(cfg, s, t, y),
                                   (cfg.distill.knobs["ls_ce"] if loss == "ls" else 1.0)
                                   * (mixed_ce - F.cross_entropy(s, y)))


def test_kd_by_name_is_hintons_loss_bit_for_bit(batch):
    s, t, y = batch
    s, t = s.float(), t.float()
    assert torch.equal(_loss(_cfg(2.0, 0.9, loss="kd"), s, t, y), kd_loss(s, t, y, 2.0, 0.9))
    assert torch.equal(kd_loss(s, t, y, 2.0, 0.9),
                       0.9 * soft_loss(s, t, 2.0) + (1 - 0.9) * F.cross_entropy(s, y))
