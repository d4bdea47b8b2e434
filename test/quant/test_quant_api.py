"""quantize_: layer selection, calibration, training behaviour, AWQ vs RTN, parameters."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qail_ros import quant


def mlp(seed=0, obs=12, hidden=32, act=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(obs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, act), nn.Tanh())


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1d = nn.Conv1d(8, 8, 1)
        self.norm = nn.LayerNorm(8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        h = self.conv(x).mean(dim=(2, 3))                     # (B, 8)
        h = self.conv1d(h[:, :, None])[:, :, 0]
        h = self.norm(h)[:, None, :]
        h, _ = self.attn(h, h, h)
        return self.head(h[:, 0])


def test_quantize_is_in_place_and_shares_parameters():
    m = mlp()
    weight = m[0].weight
    out = quant.quantize_(m, quant.W4A4LSQ(), calibration=torch.randn(64, 12))
    assert out is m
    assert isinstance(m[0], quant.QuantLinear) and isinstance(m[0], nn.Linear)
    assert m[0].weight is weight
    assert quant.quantization_report(m)['layers'] == ['0', '2', '4']


def test_first_layer_signed_relu_fed_layers_unsigned():
    m = quant.quantize_(mlp(), quant.W4A4LSQ(), calibration=torch.randn(64, 12))
    assert (m[0].input_quant.qmin, m[0].input_quant.qmax) == (-8, 7)
    assert (m[2].input_quant.qmin, m[2].input_quant.qmax) == (0, 15)


def test_include_exclude_and_keep_first_last():
    x = torch.randn(8, 12)
    m = quant.quantize_(mlp(), quant.W4A4LSQ(exclude=['2']), calibration=x)
    assert type(m[2]) is nn.Linear and isinstance(m[0], quant.QuantLinear)
    m = quant.quantize_(mlp(), quant.W4A4LSQ(include=['2']), calibration=x)
    assert [type(m[i]) for i in (0, 2, 4)] == [nn.Linear, quant.QuantLinear, nn.Linear]
    m = quant.quantize_(mlp(), quant.W4A4LSQ(keep_first_last_fp=True), calibration=x)
    assert [type(m[i]) for i in (0, 2, 4)] == [nn.Linear, quant.QuantLinear, nn.Linear]
    assert 'keep_first_last_fp' in quant.quantization_report(m)['skipped']['0']


def test_unsupported_layers_are_left_alone_and_listed():
    m = Mixed()
    x = torch.randn(4, 3, 6, 6)
    ref = m(x)
    quant.quantize_(m, quant.W8A8LSQ(), calibration=x)
    report = quant.quantization_report(m)
    assert report['layers'] == ['conv', 'head']
    assert 'unsupported layer type Conv1d' in report['skipped']['conv1d']
    assert 'unsupported layer type LayerNorm' in report['skipped']['norm']
    assert 'MultiheadAttention' in report['skipped']['attn.out_proj']
    assert type(m.conv1d) is nn.Conv1d
    torch.testing.assert_close(m(x), ref, atol=0.15, rtol=0.1)   # W8A8: close to float


def test_config_errors():
    x = torch.randn(8, 12)
    with pytest.raises(ValueError, match='needs calibration'):
        quant.quantize_(mlp(), quant.WeightActivationRTN(w_bits=4, a_bits=4))
    with pytest.raises(ValueError, match='does not divide'):
        quant.quantize_(mlp(), quant.WeightOnlyRTN(granularity='group', group_size=8))
    with pytest.raises(ValueError, match='no layer'):
        quant.quantize_(mlp(), quant.W4A4LSQ(include=['nope']), calibration=x)
    with pytest.raises(ValueError, match='QuantConfig'):
        quant.quantize_(mlp(), {'scheme': 'lsq'})
    m = quant.quantize_(mlp(), quant.W4A4LSQ(), calibration=x)
    with pytest.raises(ValueError, match='already quantized'):
        quant.quantize_(m, quant.W4A4LSQ(), calibration=x)
    with pytest.raises(ValueError, match='not understood'):
        quant.quantize_(mlp(), quant.W4A4LSQ(), calibration=3.0)


def test_calibration_forms_agree():
    x = torch.randn(32, 12)
    a = quant.quantize_(mlp(), quant.W4A4LSQ(), calibration=x)
    b = quant.quantize_(mlp(), quant.W4A4LSQ(), calibration=[x[:16], (x[16:],)])
    c = quant.quantize_(mlp(), quant.W4A4LSQ(), calibration=lambda model: model(x))
    for other in (b, c):
        for i in (0, 2, 4):
            torch.testing.assert_close(a[i].input_quant.scale, other[i].input_quant.scale)


def test_rtn_w4a4_uses_per_tensor_ranges_from_calibration():
    x = torch.randn(256, 12)
    m = quant.quantize_(mlp(), quant.rtn_config(4, 4), calibration=x)
    assert m[0].weight_quant.scale.dim() == 0 and m[0].input_quant.scale.dim() == 0
    assert m[0].input_quant.scale.item() == pytest.approx(x.abs().max().item() / 7, rel=1e-6)
    assert m[0].weight_quant.scale.item() == pytest.approx(
        m[0].weight.abs().max().item() / 7, rel=1e-6)
    assert not any(p.requires_grad for n, p in m.named_parameters() if 'scale' in n)


def test_factored_forward_equals_explicit_fake_quant_and_its_gradients():
    torch.manual_seed(0)
    x = torch.randn(16, 12)
    m = quant.quantize_(mlp(), quant.W4A4LSQ(w_granularity='per_channel'), calibration=x)
    layer = m[0]
    y = layer(x)
    y.square().sum().backward()
    grads = [p.grad.clone() for p in (layer.weight, layer.weight_quant.scale,
                                      layer.input_quant.scale)]
    for p in (layer.weight, layer.weight_quant.scale, layer.input_quant.scale):
        p.grad = None
    ref = F.linear(layer.input_quant(x), layer.weight_quant(layer.weight), layer.bias)
    torch.testing.assert_close(y, ref)
    ref.square().sum().backward()
    for g, p in zip(grads, (layer.weight, layer.weight_quant.scale, layer.input_quant.scale)):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6)


def test_split_parameters_and_qat_reduces_the_loss():
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)        # tiny matrices: threads only add contention here
    try:
        _qat_reduces_the_loss()
    finally:
        torch.set_num_threads(threads)


def _qat_reduces_the_loss():
    teacher = mlp()
    x = torch.randn(256, 12)
    with torch.no_grad():
        target = teacher(x)
    student = quant.quantize_(copy.deepcopy(teacher), quant.W3A3LSQ(), calibration=x[:128])
    model_params, step_params = quant.split_parameters(student)
    assert len(step_params) == 6 and len(model_params) == 6
    assert all(p.dim() == 0 for p in step_params)
    opt = torch.optim.Adam([{'params': model_params}, {'params': step_params}], lr=3e-3)
    before = F.mse_loss(student(x), target).item()
    steps0 = [p.detach().clone() for p in step_params]
    for _ in range(40):
        opt.zero_grad()
        F.mse_loss(student(x), target).backward()
        opt.step()
    after = F.mse_loss(student(x), target).item()
    assert after < 0.7 * before
    assert any(not torch.equal(a, b) for a, b in zip(steps0, step_params))  # steps learn


def test_lsq_without_calibration_initialises_on_first_training_forward():
    m = quant.quantize_(mlp(), quant.W4A4LSQ())
    assert not bool(m[0].input_quant.initialized)
    m.train()
    m(torch.randn(32, 12))
    assert all(bool(m[i].input_quant.initialized) for i in (0, 2, 4))


def test_student_state_dict_reloads_into_a_requantized_copy():
    x = torch.randn(64, 12)
    teacher = mlp()
    student = quant.quantize_(copy.deepcopy(teacher), quant.W4A4LSQ(), calibration=x)
    with torch.no_grad():
        for p in student.parameters():
            p.mul_(1.01)
    fresh = quant.quantize_(copy.deepcopy(teacher), quant.W4A4LSQ(), calibration=x[:5])
    fresh.load_state_dict(student.state_dict())
    torch.testing.assert_close(fresh(x), student(x), rtol=0, atol=0)


def test_awq_beats_rtn_with_a_few_large_input_channels():
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(256, 128))
    x = torch.randn(1024, 256)
    x[:, :4] *= 40                                    # salient input channels
    with torch.no_grad():
        ref = layer(x)
    rtn = quant.quantize_(copy.deepcopy(layer), quant.WeightOnlyRTN(
        bits=4, granularity='group', group_size=64, symmetric=False))
    awq = quant.quantize_(copy.deepcopy(layer), quant.Int4WeightOnlyAWQ(group_size=64),
                          calibration=x[:512])
    with torch.no_grad():
        x_test = x[512:]
        err_rtn = F.mse_loss(rtn(x_test), ref[512:]).item()
        err_awq = F.mse_loss(awq(x_test), ref[512:]).item()
    assert err_awq < 0.75 * err_rtn
    assert awq[0].input_scale is not None and awq[0].input_scale[:4].min() > 1


def test_awq_before_quantization_is_the_same_math():
    from qail_ros.quant.awq import awq_search
    torch.manual_seed(0)
    w = torch.randn(32, 64)
    x = torch.randn(100, 64)
    x[:, 3] *= 30
    q = quant.FakeQuantizer(4, symmetric=False, signed=False, granularity='group',
                            group_size=32, channels=32, groups=2)
    s, alpha, errors = awq_search(w, x, q, alpha_grid=10)
    assert len(errors) == 11 and 0 <= alpha <= 1
    assert min(errors) <= errors[0]                    # alpha = 0 is plain RTN
    torch.testing.assert_close((x / s) @ (w * s).t(), x @ w.t(), rtol=1e-4, atol=1e-4)


def test_root_layer_is_quantized_in_place():
    layer = nn.Linear(8, 4)
    out = quant.quantize_(layer, quant.WeightOnlyRTN(bits=8))
    assert out is layer and isinstance(layer, quant.QuantLinear)
    assert layer.weight_quant is not None


@pytest.mark.parametrize('cfg', [quant.WeightOnlyRTN(bits=4, granularity='group', group_size=32),
                                 quant.W4A4LSQ(), quant.Int4WeightOnlyAWQ(group_size=32)],
                         ids=lambda c: c.scheme)
def test_bf16_models_keep_their_dtype(cfg):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16)).to(torch.bfloat16)
    x = torch.randn(4, 64, dtype=torch.bfloat16)
    ref = m(x)
    q = quant.quantize_(copy.deepcopy(m), cfg, calibration=x)
    y = q(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref.float(), atol=0.3, rtol=0.2)
    assert quant.convert_to_integer(q.eval())(x).dtype == torch.bfloat16


def test_eval_weight_cache_follows_weight_and_step_changes():
    torch.manual_seed(0)
    x = torch.randn(16, 12)
    m = quant.quantize_(mlp(), quant.W4A4LSQ(), calibration=x).eval()
    other = quant.quantize_(mlp(seed=1), quant.W4A4LSQ(), calibration=x).eval()
    with torch.no_grad():
        y0 = m(x)
        assert torch.equal(m(x), y0)                       # served from the cache
        m.load_state_dict(other.state_dict())              # in-place copies bump versions
        torch.testing.assert_close(m(x), other(x), rtol=0, atol=0)
        m[0].weight_quant.set_scale(m[0].weight_quant.scale * 2)
        y2 = m(x)
    m.train()
    ref = F.linear(m[0].input_quant(x), m[0].weight_quant(m[0].weight), m[0].bias)
    torch.testing.assert_close(m[0](x), ref)
    assert not torch.equal(y2, other(x).detach())


def test_a_config_that_fails_on_one_layer_leaves_the_model_untouched():
    m = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 48))   # 32 % 64 != 0
    with pytest.raises(ValueError, match='layer 2'):
        quant.quantize_(m, quant.WeightOnlyRTN(granularity='group', group_size=64))
    assert type(m[0]) is nn.Linear and type(m[2]) is nn.Linear
    w = m[0].weight.detach().clone()
    with pytest.raises(ValueError, match='layer 2'):
        quant.quantize_(m, quant.Int4WeightOnlyAWQ(group_size=64), calibration=torch.randn(4, 64))
    assert type(m[0]) is nn.Linear and torch.equal(m[0].weight, w)
