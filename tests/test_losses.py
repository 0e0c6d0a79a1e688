"""The distillation loss pinned to Hinton et al. (2015), eq. 2 and its stated properties."""

import pytest
import torch
import torch.nn.functional as F

from kd.losses import distillation_loss, soft_loss


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
