"""Loss values of qail_ros.qail.losses on cases computed by hand."""
import math

import pytest
import torch

from qail_ros.qail.losses import lppd_loss, qail_loss, qbc_loss, total_loss, weighted_mean


def test_qail_deterministic_mse_surrogate():
    out = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    target = torch.tensor([[1.0, 0.0], [0.0, 4.0]])
    # per sample: (0 + 4) / 2 = 2 and (9 + 0) / 2 = 4.5
    assert qail_loss(out, target).item() == pytest.approx(3.25)
    # weighted: mean(w * l) = (1 * 2 + 2 * 4.5) / 2, not renormalised
    assert qail_loss(out, target, weights=torch.tensor([1.0, 2.0])).item() == pytest.approx(5.5)


def test_qail_gaussian_nll():
    mean, log_std = torch.zeros(1, 2), torch.zeros(1, 2)
    target = torch.tensor([[1.0, 0.0]])
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    expected = (0.5 + half_log_2pi) + half_log_2pi  # summed over the two action dims
    assert qail_loss((mean, log_std), target, head='gaussian').item() == pytest.approx(expected)
    dist = torch.distributions.Normal(mean, torch.full((1, 2), 2.0))
    # N(0, 2): -log p(1) = log 2 + 0.5 log 2pi + 1/8 ; -log p(0) = log 2 + 0.5 log 2pi
    expected = 2 * (math.log(2) + half_log_2pi) + 0.125
    assert qail_loss(dist, target, head='gaussian').item() == pytest.approx(expected, rel=1e-6)


def test_qail_tokens_cross_entropy_ignores_padding():
    logits = torch.zeros(2, 3, 4)  # uniform over 4 tokens: CE = log 4 for every token
    logits[1, 0, 2] = 100.0        # sample 1, token 0 is certain (CE ~ 0)
    target = torch.tensor([[0, 1, 2], [2, -100, -100]])
    per0, per1 = math.log(4), 0.0  # sample 1 has one valid token
    got = qail_loss(logits, target, head='tokens').item()
    assert got == pytest.approx((per0 + per1) / 2, abs=1e-5)
    # categorical (B, V) with (B,) targets
    assert qail_loss(torch.zeros(3, 5), torch.tensor([0, 1, 4]),
                     head='categorical').item() == pytest.approx(math.log(5))


def test_qbc_distances():
    s = torch.tensor([[3.0, 4.0], [1.0, 1.0]])
    t = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    assert qbc_loss(s, t, distance='l2').item() == pytest.approx(2.5, abs=1e-5)  # (5 + 0) / 2
    assert qbc_loss(s, t, distance='mse').item() == pytest.approx(6.25)          # (12.5 + 0) / 2
    w = torch.tensor([2.0, 1.0])
    assert qbc_loss(s, t, distance='l2', weights=w).item() == pytest.approx(5.0, abs=1e-5)


def test_qbc_kl_logits_and_distributions():
    t = torch.log(torch.tensor([[0.5, 0.5]]))
    s = torch.log(torch.tensor([[0.25, 0.75]]))
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)  # KL(teacher || student)
    assert qbc_loss(s, t, distance='kl').item() == pytest.approx(expected, rel=1e-5)
    assert qbc_loss(t, t, distance='kl').item() == pytest.approx(0.0, abs=1e-7)
    # Gaussians: KL(N(0,1) || N(1,1)) = 0.5 per dim
    sp = (torch.ones(1, 2), torch.zeros(1, 2))
    tp = (torch.zeros(1, 2), torch.zeros(1, 2))
    assert qbc_loss(sp, tp, distance='kl').item() == pytest.approx(1.0, rel=1e-6)


def test_qbc_gradient_reaches_student_only():
    s = torch.tensor([[1.0, 2.0]], requires_grad=True)
    t = torch.tensor([[0.0, 0.0]], requires_grad=True)
    qbc_loss(s, t, distance='l2').backward()
    assert t.grad is None
    # d/ds ||s - t|| = (s - t) / ||s - t||
    assert torch.allclose(s.grad, torch.tensor([[1.0, 2.0]]) / math.sqrt(5), atol=1e-6)


def test_lppd_and_total():
    s, t = torch.tensor([[1.0, 3.0]]), torch.tensor([[0.0, 0.0]])
    assert lppd_loss(s, t).item() == pytest.approx(5.0)  # deterministic: MSE of outputs
    tl = torch.log(torch.tensor([[0.5, 0.5]]))
    assert lppd_loss(tl, tl, head='categorical').item() == pytest.approx(0.0, abs=1e-7)
    assert total_loss(torch.tensor(1.0), torch.tensor(3.0), lam=2.0).item() == 7.0
    assert total_loss(None, torch.tensor(3.0)).item() == 3.0
    assert total_loss(torch.tensor(1.0), None).item() == 1.0
    with pytest.raises(ValueError):
        total_loss(None, None)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match='weights'):
        weighted_mean(torch.ones(3), torch.ones(2))
    with pytest.raises(ValueError, match='shape'):
        qbc_loss(torch.ones(2, 3), torch.ones(2, 2))
    with pytest.raises(ValueError, match='head'):
        qail_loss(torch.ones(2, 3), torch.ones(2, 3), head='nope')
