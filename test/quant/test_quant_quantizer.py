"""FakeQuantizer: error bounds, clipping, STE gradients, the LSQ step gradient and init."""
from __future__ import annotations

import math

import pytest
import torch

from qail_ros.quant import FakeQuantizer
from qail_ros.quant.quantizer import qrange


def _quantizer(x, **kw):
    q = FakeQuantizer(channels=x.shape[0], groups=x[0].numel() // kw.get('group_size', 128)
                      if kw.get('granularity') == 'group' else 1, **kw)
    q.init_from(x)
    return q


def _broadcast(q, x, t):
    """A per-tensor/channel/group parameter broadcast to x's shape."""
    return (t * torch.ones_like(q._view(x))).reshape(x.shape)


CASES = [
    dict(bits=4, granularity='per_tensor', symmetric=True, signed=True),
    dict(bits=4, granularity='per_tensor', symmetric=False, signed=False),
    dict(bits=4, granularity='per_channel', symmetric=True, signed=True),
    dict(bits=3, granularity='per_channel', symmetric=False, signed=False),
    dict(bits=8, granularity='group', group_size=16, symmetric=True, signed=True),
    dict(bits=4, granularity='group', group_size=32, symmetric=False, signed=False),
    dict(bits=2, granularity='group', group_size=8, symmetric=True, signed=True),
]


@pytest.mark.parametrize('kw', CASES, ids=lambda kw: '-'.join(str(v) for v in kw.values()))
def test_error_at_most_half_a_step_inside_the_range(kw):
    torch.manual_seed(0)
    x = torch.randn(12, 64) * torch.linspace(0.1, 3, 12)[:, None] + 0.3
    q = _quantizer(x, **kw)
    xq = q(x)
    step = _broadcast(q, x, q.scale)
    zero = _broadcast(q, x, q.zero_point)
    lo, hi = (q.qmin - zero) * step, (q.qmax - zero) * step
    inside = (x >= lo) & (x <= hi)
    assert inside.float().mean() > 0.95          # min-max ranges cover (almost) everything
    err = (x - xq).abs()
    assert torch.all(err[inside] <= step[inside] / 2 * (1 + 1e-5))
    # values land exactly on the grid: (xq / s + z) are integers in [qmin, qmax]
    codes = xq / step + zero
    assert torch.allclose(codes, codes.round(), atol=1e-4)
    assert codes.min() >= q.qmin - 1e-4 and codes.max() <= q.qmax + 1e-4
    if kw['symmetric']:
        assert torch.all(q.zero_point == 0)
    else:   # asymmetric: the range is [min, max] (with 0 inside), zero maps exactly to 0
        assert torch.equal(q(torch.zeros_like(x)), torch.zeros_like(x))


@pytest.mark.parametrize('kw', CASES[:4], ids=lambda kw: '-'.join(str(v) for v in kw.values()))
def test_values_outside_the_range_are_clipped(kw):
    torch.manual_seed(1)
    x = torch.randn(4, 32)
    q = _quantizer(x, **kw)
    big = x * 5 + torch.sign(x) * 3
    xq = q(big)
    step = _broadcast(q, big, q.scale)
    zero = _broadcast(q, big, q.zero_point)
    hi, lo = (q.qmax - zero) * step, (q.qmin - zero) * step
    assert torch.allclose(xq[big > hi], hi[big > hi])
    assert torch.allclose(xq[big < lo], lo[big < lo])
    assert (big > hi).any() and (big < lo).any()


def test_qrange():
    assert qrange(4, True) == (-8, 7)
    assert qrange(4, False) == (0, 15)
    assert qrange(8, True) == (-128, 127)
    assert qrange(3, False) == (0, 7)


@pytest.mark.parametrize('learnable', [False, True])
def test_ste_gradient_is_identity_inside_and_zero_outside(learnable):
    q = FakeQuantizer(4, learnable=learnable, init='lsq')
    q.set_scale(0.25)
    x = torch.tensor([-3.0, -2.0, -0.6, 0.0, 0.37, 1.74, 1.8, 5.0], requires_grad=True)
    q(x).backward(torch.ones_like(x))
    # range [-8 * 0.25, 7 * 0.25] = [-2.0, 1.75]
    expected = torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0])
    assert torch.equal(x.grad, expected)


def test_lsq_step_gradient_matches_the_paper_on_a_hand_computed_case():
    # 3-bit signed: Qn = 4, Qp = 3; s = 0.5; v / s = [0.6, -3.4, 5.2, 1.8, -6.0]
    # d v_hat / d s = round(v/s) - v/s inside, Qp above, -Qn below:
    #               = [0.4, 0.4, 3, 0.2, -4]
    # with upstream gradient [1, 2, 3, 4, 5]: 0.4 + 0.8 + 9 + 0.8 - 20 = -9.0
    # times g = 1 / sqrt(N * Qp) = 1 / sqrt(5 * 3)
    q = FakeQuantizer(3, learnable=True, init='lsq')
    q.set_scale(0.5)
    v = torch.tensor([0.3, -1.7, 2.6, 0.9, -3.0], requires_grad=True)
    out = q(v)
    assert torch.allclose(out, torch.tensor([0.5, -1.5, 1.5, 1.0, -2.0]))
    out.backward(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert q.scale.grad.item() == pytest.approx(-9.0 / math.sqrt(15), rel=1e-6)
    assert torch.equal(v.grad, torch.tensor([1.0, 2.0, 0.0, 4.0, 0.0]))


def test_lsq_activation_gradient_scale_uses_features_per_sample():
    q = FakeQuantizer(4, learnable=True, init='lsq', is_weight=False)
    q.set_scale(1.0)
    x = torch.full((10, 6), 0.25)   # every v / s = 0.25 -> round 0: d/ds = -0.25 each
    q(x).sum().backward()
    g = 1 / math.sqrt(6 * 7)        # N = 6 features per sample, Qp = 7
    assert q.scale.grad.item() == pytest.approx(60 * -0.25 * g, rel=1e-6)


def test_lsq_init_is_two_mean_abs_over_sqrt_qp():
    torch.manual_seed(0)
    w = torch.randn(32, 16)
    q = FakeQuantizer(4, learnable=True, init='lsq')
    q.init_from(w)
    assert q.scale.item() == pytest.approx(2 * w.abs().mean().item() / math.sqrt(7), rel=1e-5)
    qc = FakeQuantizer(4, learnable=True, init='lsq', granularity='per_channel', channels=32)
    qc.init_from(w)
    assert torch.allclose(qc.scale[:, 0], 2 * w.abs().mean(dim=1) / math.sqrt(7))


def test_auto_sign_picks_unsigned_for_non_negative_inputs():
    q = FakeQuantizer(4, init='lsq', learnable=True, auto_sign=True, is_weight=False)
    q.init_from(torch.rand(64, 8))
    assert (q.qmin, q.qmax) == (0, 15)
    q2 = FakeQuantizer(4, init='lsq', learnable=True, auto_sign=True, is_weight=False)
    q2.init_from(torch.randn(64, 8))
    assert (q2.qmin, q2.qmax) == (-8, 7)


def test_sign_survives_state_dict_round_trip():
    q = FakeQuantizer(4, init='minmax', auto_sign=True, is_weight=False)
    q.init_from(torch.rand(16, 4))
    fresh = FakeQuantizer(4, init='minmax', auto_sign=True, is_weight=False)
    fresh.load_state_dict(q.state_dict())
    x = torch.rand(5, 4) * 2 - 0.5
    assert torch.equal(fresh(x), q(x))
    assert fresh.qmin == 0


def test_uninitialised_quantizer_in_eval_raises_with_the_fix():
    q = FakeQuantizer(4, learnable=True, init='lsq').eval()
    with pytest.raises(RuntimeError, match='calibration'):
        q(torch.randn(3))
    q.train()
    q(torch.randn(100))            # LSQ recipe: first training batch initialises the step
    assert bool(q.initialized)
