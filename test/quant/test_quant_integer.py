"""The integer path: packing, bit-exactness to fake quant, weight-only int4/int8 kernels."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from qail_ros import quant
from qail_ros.quant.integer import (INTEGER_MODULES, Int4WeightOnlyLinear, Int8WeightOnlyLinear,
                                    IntConv2d, IntLinear, int4_kernel_available)
from qail_ros.quant.packing import pack_codes, pack_int4, unpack_codes, unpack_int4


@pytest.mark.parametrize('signed', [True, False])
@pytest.mark.parametrize('length', [1, 7, 64])
def test_int4_packing_round_trip(signed, length):
    lo, hi = (-8, 7) if signed else (0, 15)
    codes = torch.randint(lo, hi + 1, (5, length))
    packed = pack_int4(codes, signed=signed)
    assert packed.dtype == torch.uint8 and packed.shape == (5, (length + 1) // 2)
    assert torch.equal(unpack_int4(packed, length, signed=signed).long(), codes)


def _cfg_id(c) -> str:
    """A short test id: scheme and the fields that differ from the defaults."""
    default = type(c)().to_dict()
    diff = [f'{k}={v}' for k, v in c.to_dict().items() if k != 'scheme'
            and default.get(k, object()) != v]
    return '-'.join([c.scheme, *diff])


def test_int4_packing_layout_and_range_check():
    packed = pack_int4(torch.tensor([[1, 2, 15]]), signed=False)
    assert packed.tolist() == [[0x21, 0x0F]]          # element 0 low nibble, 1 high nibble
    with pytest.raises(ValueError, match='4-bit range'):
        pack_int4(torch.tensor([16]), signed=False)


@pytest.mark.parametrize('bits, signed', [(3, True), (4, False), (6, True), (8, True),
                                          (8, False)])
def test_pack_codes_round_trip(bits, signed):
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    codes = torch.randint(lo, hi + 1, (3, 33), dtype=torch.int32)
    stored = pack_codes(codes, bits, signed=signed)
    assert stored.element_size() == 1
    assert stored.numel() == (3 * 17 if bits <= 4 else 3 * 33)
    assert torch.equal(unpack_codes(stored, bits, 33, signed=signed), codes)


def convnet():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(32 * 6 * 6, 64), nn.ReLU(), nn.Linear(64, 5))


STATIC = [
    quant.W4A4LSQ(), quant.W8A8LSQ(), quant.W3A3LSQ(),
    quant.LSQ(w_bits=4, a_bits=8, w_granularity='per_channel'),
    quant.WeightActivationRTN(w_bits=4, a_bits=4),
    quant.WeightActivationRTN(w_bits=8, a_bits=8, w_granularity='per_channel'),
    quant.WeightActivationRTN(w_bits=8, a_bits=8, a_symmetric=False),
    quant.WeightActivationRTN(w_bits=4, a_bits=4, a_symmetric=False),
]


@pytest.mark.parametrize('cfg', STATIC, ids=lambda c: _cfg_id(c))
def test_integer_path_is_bit_exact_to_fake_quant(cfg):
    torch.manual_seed(1)
    x = torch.randn(6, 3, 12, 12)
    fake = quant.quantize_(convnet(), cfg, calibration=torch.randn(32, 3, 12, 12)).eval()
    integer = quant.convert_to_integer(copy.deepcopy(fake))
    assert [type(m) for m in integer if isinstance(m, INTEGER_MODULES)] == [
        IntConv2d, IntConv2d, IntLinear, IntLinear]
    with torch.no_grad():
        y_fake, y_int = fake(x), integer(x)
    assert torch.equal(y_fake, y_int)
    # and the integer codes really are in the b-bit range
    for m in integer:
        if isinstance(m, IntLinear):
            b = m.bits_w
            assert m.qweight.min() >= -(2 ** (b - 1)) and m.qweight.max() <= 2 ** (b - 1) - 1


@pytest.mark.parametrize('bits', [4, 8])
def test_bit_exact_at_a_wide_layer(bits):
    torch.manual_seed(2)
    layer = nn.Sequential(nn.Linear(2048, 256))
    x = torch.randn(4, 2048)
    fake = quant.quantize_(layer, quant.LSQ(w_bits=bits, a_bits=bits), calibration=x).eval()
    integer = quant.convert_to_integer(copy.deepcopy(fake))
    with torch.no_grad():
        assert torch.equal(fake(x), integer(x))
    # the int32 accumulator is the exact integer dot product of the codes
    m = integer[0]
    q = (m._codes(x) - m.offset).to(torch.int64)
    assert torch.equal(m._matmul(q).to(torch.int64),
                       q @ m.qweight.to(torch.int64).t() + (0 if m._corr is None else m._corr))


def test_integer_layers_handle_leading_batch_dims():
    torch.manual_seed(3)
    layer = nn.Sequential(nn.Linear(32, 16))
    x = torch.randn(2, 5, 32)
    fake = quant.quantize_(layer, quant.W4A4LSQ(), calibration=x).eval()
    integer = quant.convert_to_integer(copy.deepcopy(fake))
    with torch.no_grad():
        assert torch.equal(fake(x), integer(x))
        assert integer(x).shape == (2, 5, 16)


WEIGHT_ONLY = [
    (quant.WeightOnlyRTN(bits=4), Int4WeightOnlyLinear),
    (quant.WeightOnlyRTN(bits=4, granularity='group', group_size=32, symmetric=False),
     Int4WeightOnlyLinear),
    (quant.WeightOnlyRTN(bits=3, granularity='per_tensor'), Int4WeightOnlyLinear),
    (quant.Int4WeightOnlyAWQ(group_size=64), Int4WeightOnlyLinear),
    (quant.WeightOnlyRTN(bits=8), Int8WeightOnlyLinear),
    (quant.WeightOnlyRTN(bits=8, symmetric=False), Int8WeightOnlyLinear),
]


@pytest.mark.parametrize('cfg, cls', WEIGHT_ONLY, ids=lambda c: getattr(c, 'scheme', ''))
def test_weight_only_integer_layers_match_fake_quant(cfg, cls):
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 64))
    x = torch.randn(8, 256)
    fake = quant.quantize_(model, cfg, calibration=x).eval()
    exact = quant.convert_to_integer(copy.deepcopy(fake), int4_compute_dtype=None)
    fast = quant.convert_to_integer(copy.deepcopy(fake))     # int4: bf16 inside the kernel
    assert isinstance(exact[0], cls) and isinstance(exact[2], cls)
    with torch.no_grad():
        ref = fake(x)
        torch.testing.assert_close(exact(x), ref, rtol=1e-4, atol=1e-4)
        y = fast(x)
        y_bf16 = fast(x.bfloat16())
    assert y.dtype == torch.float32 and y_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(y, ref, rtol=0.02, atol=0.01)
    torch.testing.assert_close(y_bf16.float(), ref, rtol=0.05, atol=0.02)


@pytest.mark.skipif(not int4_kernel_available(), reason='torch has no CPU int4 kernel')
def test_int4_kernel_is_used_where_the_shape_allows_and_falls_back_otherwise():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))   # n=10: no
    x = torch.randn(3, 256)
    fake = quant.quantize_(model, quant.WeightOnlyRTN(bits=4, granularity='group',
                                                      group_size=64), calibration=x).eval()
    integer = quant.convert_to_integer(copy.deepcopy(fake), int4_compute_dtype=None)
    assert integer[0].uses_kernel and integer[0].kernel_group == 64
    assert not integer[2].uses_kernel                  # N % 16 != 0 -> dequantized fallback
    with torch.no_grad():
        torch.testing.assert_close(integer(x), fake(x), rtol=1e-4, atol=1e-4)


def test_layers_without_integer_path_are_kept_and_listed():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 8))
    x = torch.randn(2, 3, 6, 6)
    fake = quant.quantize_(model, quant.WeightOnlyRTN(bits=4), calibration=x).eval()
    quant.convert_to_integer(fake)
    report = quant.quantization_report(fake)['integer']
    assert 'weight-only Conv2d' in report['kept']['0']
    assert report['converted'] == {'2': 'Int4WeightOnlyLinear'}
    with pytest.raises(ValueError, match='no fake-quantized layers'):
        quant.convert_to_integer(nn.Sequential(nn.Linear(2, 2)))


def test_kernel_benchmark_runs_on_a_tiny_shape(capsys):
    import argparse
    import json

    from qail_ros.bench import quant as bench
    parser = argparse.ArgumentParser()
    parser.add_argument('--json', action='store_true')
    bench.add_arguments(parser)
    threads = torch.get_num_threads()
    try:
        assert bench.main(parser.parse_args(['--shapes', '256x128', '--runs', '2',
                                             '--json'])) == 0
    finally:
        torch.set_num_threads(threads)
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    impls = {r['impl'] for r in result['results']}
    assert {'fp32 nn.Linear', 'W4A4 on int8 (_int_mm)'} <= impls
    assert all(r['median_ms'] > 0 for r in result['results'])


def test_int4_layer_passes_input_gradients_for_adapters_on_a_frozen_base():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(128, 64))
    fake = quant.quantize_(model, quant.WeightOnlyRTN(bits=4, granularity='group',
                                                      group_size=32)).eval()
    integer = quant.convert_to_integer(copy.deepcopy(fake), int4_compute_dtype=None)
    assert integer[0].uses_kernel
    x = torch.randn(3, 128, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    g = torch.randn(3, 64)
    integer(x).backward(g)
    fake[0].weight.requires_grad_(False)
    fake(x_ref).backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('k', [1, 2, 3])
def test_tiny_input_widths_are_exact(k):
    # torch 2.13's CPU _int_mm is wrong at k == 1 (e.g. CILRS's scalar speed input): guarded
    torch.manual_seed(8)
    layer = nn.Sequential(nn.Linear(k, 16))
    x = torch.randn(5, k)
    fake = quant.quantize_(layer, quant.W8A8LSQ(), calibration=x).eval()
    integer = quant.convert_to_integer(copy.deepcopy(fake))
    with torch.no_grad():
        assert torch.equal(fake(x), integer(x))


@pytest.mark.parametrize('conv', [dict(kernel_size=1), dict(kernel_size=1, stride=2),
                                  dict(kernel_size=3, padding=2, dilation=2),
                                  dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0)),
                                  dict(kernel_size=3)])
@pytest.mark.parametrize('cfg', [quant.W4A4LSQ(), quant.W8A8LSQ()])
def test_int8_im2col_conv_is_bit_exact_for_every_geometry(conv, cfg):
    # IntConv2d builds int8 channels-last columns from strided slices; every geometry and
    # both the signed (4-bit) and offset (8-bit) codes must equal the fake-quant conv
    torch.manual_seed(3)
    x = torch.randn(2, 5, 9, 11)
    fake = quant.quantize_(nn.Sequential(nn.Conv2d(5, 7, **conv)), cfg, calibration=x).eval()
    integer = quant.convert_to_integer(copy.deepcopy(fake))
    assert isinstance(integer[0], IntConv2d)
    with torch.no_grad():
        assert torch.equal(fake(x), integer(x))
