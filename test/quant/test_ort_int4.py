"""INT4 weight-only layers on onnxruntime MatMulNBits: packing, numerics, fusion, a Llama."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from qail_ros import quant
from qail_ros.quant.integer import Int4WeightOnlyLinear

ort_int4 = pytest.importorskip('qail_ros.quant.ort_int4')
if not ort_int4.ort_available():
    pytest.skip('onnxruntime / onnx not installed', allow_module_level=True)
from qail_ros.quant.ort_int4 import (OrtInt4Error, OrtInt4GatedMLP, OrtInt4Linear,  # noqa: E402
                                     OrtInt4Slice, convert_to_ort_int4)


def _quantized_linear(k: int, n: int, cfg, bias: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(k, n, bias=bias))
    if bias:
        with torch.no_grad():
            model[0].bias.normal_()
    quant.quantize_(model, cfg)
    return model


def _int8_blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """accuracy_level 4's activation rounding: symmetric int8 per row and block of K (the
    last block zero-padded)."""
    k = x.shape[-1]
    xb = nn.functional.pad(x, (0, -k % block)).reshape(x.shape[0], -1, block)
    s = xb.abs().amax(-1, keepdim=True) / 127
    return (torch.round(xb / s) * s).reshape(x.shape[0], -1)[:, :k]


CONFIGS = [
    quant.WeightOnlyRTN(bits=4, granularity='group', group_size=128),
    quant.WeightOnlyRTN(bits=4, granularity='group', group_size=32, symmetric=False),
    quant.WeightOnlyRTN(bits=4, granularity='per_channel'),
    quant.WeightOnlyRTN(bits=3, granularity='group', group_size=64, symmetric=False),
]


@pytest.mark.parametrize('cfg', CONFIGS, ids=lambda c: f'b{c.bits}-{c.granularity}-'
                         f'{c.group_size}-{"sym" if c.symmetric else "asym"}')
@pytest.mark.parametrize('from_integer', [False, True])
def test_matches_dequantized_matmul(cfg, from_integer):
    """Same codes: float32 compute = the dequantized-weight matmul to float rounding;
    int8 compute = that matmul of the int8-rounded activations (block = MatMulNBits block)."""
    model = _quantized_linear(256, 48, cfg, bias=True)
    ref_layer = Int4WeightOnlyLinear(model[0], compute_dtype=None)
    w, b = ref_layer.dequantized_weight(), ref_layer.bias
    src = ref_layer if from_integer else model[0]
    x = torch.randn(2, 3, 256)
    for level in (1, 4):
        layer = OrtInt4Linear(src, accuracy_level=level)
        y = layer(x)
        assert y.shape == (2, 3, 48) and y.dtype == torch.float32
        xr = x.reshape(-1, 256)
        xr = xr if level == 1 else _int8_blocks(xr, layer.block_size)
        ref = (xr.double() @ w.double().t() + b.double()).reshape(2, 3, 48)
        err = float((y.double() - ref).abs().max() / ref.abs().max())
        assert err < 1e-5, (level, err)


@pytest.mark.parametrize('k,block', [(96, 128), (512, 256), (640, 256)])
@pytest.mark.parametrize('symmetric', [True, False])
def test_per_channel_runs_in_blocks_of_256_padding_the_last(k, block, symmetric):
    """Per channel: one scale repeated over blocks of 256 (one block of 128 for a short K);
    a K that is not a multiple is padded with codes that dequantize to 0."""
    cfg = quant.WeightOnlyRTN(bits=4, granularity='per_channel', symmetric=symmetric)
    model = _quantized_linear(k, 40, cfg, bias=True, seed=3)
    ref_layer = Int4WeightOnlyLinear(model[0], compute_dtype=None)
    w, b = ref_layer.dequantized_weight(), ref_layer.bias
    x = torch.randn(5, k)
    for level in (1, 4):
        layer = OrtInt4Linear(model[0], accuracy_level=level)
        assert layer.block_size == block
        xr = x if level == 1 else _int8_blocks(x, block)
        ref = xr.double() @ w.double().t() + b.double()
        err = float((layer(x).double() - ref).abs().max() / ref.abs().max())
        assert err < 1e-5, (level, err)
    # capped blocks (what the decoder graph asks on CUDA): the scale repeats over blocks of 128
    w128 = ort_int4.extract_weight(model[0], 'capped', max_block=128)
    assert w128.block == min(block, 128)
    assert w128.scales.shape == (40, -(-k // w128.block))
    assert bool((w128.scales == w128.scales[:, :1]).all())


def test_int8_activations_differ_from_float_by_their_rounding_only():
    """accuracy_level 4 vs the float matmul: off by about 1e-2 of the output scale (int8 x)."""
    model = _quantized_linear(512, 64, CONFIGS[0])
    w = Int4WeightOnlyLinear(model[0], compute_dtype=None).dequantized_weight()
    x = torch.randn(4, 512)
    ref = x @ w.t()
    err = float((OrtInt4Linear(model[0], accuracy_level=4)(x) - ref).abs().max()
                / ref.abs().max())
    assert 1e-5 < err < 3e-2


def test_bfloat16_input_is_cast_at_the_boundary():
    model = _quantized_linear(128, 32, CONFIGS[0])
    layer = OrtInt4Linear(model[0], accuracy_level=1)
    x = torch.randn(3, 128)
    y16 = layer(x.to(torch.bfloat16))
    assert y16.dtype == torch.bfloat16
    torch.testing.assert_close(y16.float(), layer(x.to(torch.bfloat16).float()),
                               rtol=1e-2, atol=1e-2)


def test_unsupported_layers_are_refused_with_the_fix():
    int8 = _quantized_linear(128, 32, quant.WeightOnlyRTN(bits=8, granularity='per_channel'))
    with pytest.raises(OrtInt4Error, match='up to 4 bits'):
        OrtInt4Linear(int8[0])
    small_group = _quantized_linear(64, 32, quant.WeightOnlyRTN(bits=4, granularity='group',
                                                                group_size=8))
    with pytest.raises(OrtInt4Error, match='group_size 16..256'):
        OrtInt4Linear(small_group[0])
    with pytest.raises(OrtInt4Error, match='no INT4 weight-only layers'):
        convert_to_ort_int4(nn.Sequential(nn.Linear(4, 4)))


class _Block(nn.Module):
    """Attention-like projections sharing an input, and a gated-SiLU MLP."""

    def __init__(self, d: int = 128, inter: int = 256):
        super().__init__()
        self.q_proj, self.k_proj = nn.Linear(d, d, bias=False), nn.Linear(d, 64, bias=False)
        self.v_proj = nn.Linear(d, 64, bias=False)
        self.mlp = nn.Module()
        self.mlp.gate_proj = nn.Linear(d, inter, bias=False)
        self.mlp.up_proj = nn.Linear(d, inter, bias=False)
        self.mlp.down_proj = nn.Linear(inter, d, bias=False)
        self.mlp.act_fn = nn.SiLU()
        self.mlp.forward = lambda x: self.mlp.down_proj(
            self.mlp.act_fn(self.mlp.gate_proj(x)) * self.mlp.up_proj(x))

    def forward(self, x, other=None):
        other = x if other is None else other
        # v first and k on a different input: the fused cache must not mix them up
        v, q, k = self.v_proj(x), self.q_proj(x), self.k_proj(other)
        return torch.cat([q, k, v], -1) + self.mlp(x).sum(-1, keepdim=True)


def test_fused_projections_and_mlp_equal_separate_layers():
    torch.manual_seed(0)
    block = _Block()
    quant.quantize_(block, CONFIGS[0])
    ref_model = copy.deepcopy(block)
    quant.convert_to_integer(ref_model, int4_compute_dtype=None)
    fused = convert_to_ort_int4(copy.deepcopy(block), accuracy_level=1)
    assert isinstance(fused.q_proj, OrtInt4Slice) and fused.q_proj.fused is fused.v_proj.fused
    assert isinstance(fused.mlp, OrtInt4GatedMLP)
    assert fused.mlp.weight_bytes == sum(128 * 256 // 2 + 256 * 4 for _ in range(3))
    separate = convert_to_ort_int4(copy.deepcopy(block), accuracy_level=1, fuse=False)
    assert isinstance(separate.q_proj, OrtInt4Linear)
    x, other = torch.randn(1, 5, 128), torch.randn(1, 5, 128)
    with torch.no_grad():
        ref = ref_model(x, other)
        for model in (fused, separate):
            for _ in range(2):       # repeated calls with the same tensor object stay fresh
                torch.testing.assert_close(model(x, other), ref, rtol=1e-4, atol=1e-4)
            x.mul_(0.5)              # in place: a new version, not the cached output
            ref = ref_model(x, other)
            torch.testing.assert_close(model(x, other), ref, rtol=1e-4, atol=1e-4)


def test_awq_input_scales_inside_fused_sessions():
    """AWQ gives every projection its own input scale: q/k/v become one session of three
    MatMulNBits (concatenated), the gated MLP one session with a Div per projection; both
    equal torch's int4 layers (float compute) and the fake-quant model."""
    torch.manual_seed(1)
    block = _Block()
    calib = [torch.randn(2, 7, 128) * torch.linspace(0.1, 4.0, 128) for _ in range(2)]
    quant.quantize_(block, quant.Int4WeightOnlyAWQ(group_size=64), calibration=calib)
    scales = [getattr(block, p).input_scale for p in ('q_proj', 'k_proj', 'v_proj')]
    assert all(s is not None for s in scales)
    assert not torch.equal(scales[0], scales[2])            # distinct scales: not one matmul
    ref_model = copy.deepcopy(block)
    quant.convert_to_integer(ref_model, int4_compute_dtype=None)
    fused = convert_to_ort_int4(copy.deepcopy(block), accuracy_level=1)
    assert isinstance(fused.q_proj, OrtInt4Slice) and fused.q_proj.fused is fused.k_proj.fused
    assert isinstance(fused.mlp, OrtInt4GatedMLP)
    x, other = torch.randn(1, 5, 128) * 2, torch.randn(1, 5, 128)
    with torch.no_grad():
        ref, fake = ref_model(x, other), block(x, other)
        torch.testing.assert_close(fused(x, other), ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(fused(x, other), fake, rtol=1e-4, atol=1e-4)
        # int8 activations: the same within their rounding
        fast = convert_to_ort_int4(copy.deepcopy(block))(x, other)
    err = float((fast - ref).abs().max() / ref.abs().max())
    assert err < 3e-2, err


def test_llama_logits_match_the_torch_int4_path():
    """--small decode-bench layout scaled down: fake-quant float, torch int4 and MatMulNBits
    logits over a prompt and two cached decode steps."""
    pytest.importorskip('transformers')
    from qail_ros.openvla.decode_latency import build_fp32, make_precision
    torch.set_num_threads(1)
    fp32 = build_fp32(256, 512, 2, 4)
    fake = copy.deepcopy(fp32)
    quant.quantize_(fake, quant.WeightOnlyRTN(bits=4, granularity='group', group_size=128))
    exact = convert_to_ort_int4(copy.deepcopy(fake), accuracy_level=1)
    torch_int4, _ = make_precision(fp32, 'int4', group_size=128)
    ort, dtype = make_precision(fp32, 'int4_ort_layers', group_size=128)
    assert dtype == torch.float32
    assert sum(isinstance(m, OrtInt4GatedMLP) for m in ort.modules()) == 2
    ids = torch.randint(0, 32064, (1, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outs = {name: m(input_ids=ids, use_cache=True)
                for name, m in (('fake', fake), ('exact', exact), ('torch', torch_int4),
                                ('ort', ort))}
        for step in range(2):
            logits = {n: o.logits[:, -1].float() for n, o in outs.items()}
            scale = float(logits['fake'].abs().max())

            def rel(a, b):
                return float((logits[a] - logits[b]).abs().max()) / scale
            assert rel('exact', 'fake') < 1e-4                  # float compute: same numbers
            assert rel('ort', 'fake') < 5e-2                    # int8 activations
            assert rel('ort', 'torch') < 5e-2                   # vs bf16 activations
            tok = logits['fake'].argmax(-1, keepdim=True)
            outs = {n: m(input_ids=tok, past_key_values=outs[n].past_key_values,
                         use_cache=True)
                    for n, m in (('fake', fake), ('exact', exact), ('torch', torch_int4),
                                 ('ort', ort))}


@pytest.mark.parametrize('cache', ['dynamic', 'static'])
def test_decode_bench_reports_both_int4_paths(monkeypatch, capsys, cache):
    pytest.importorskip('transformers')
    import argparse
    import json

    from qail_ros.bench import decode
    from qail_ros.openvla import decode_latency as pipeline
    monkeypatch.setitem(pipeline.LAYOUTS, 'small', (128, 256, 1, 2))
    monkeypatch.setattr(pipeline, 'measure_bandwidth_gbps', lambda mbytes=0, repeats=0: 5.0)
    args = argparse.Namespace(small=True, threads=1, tokens=2, prompt=8, repeats=1,
                              precisions='fp32,int8_ort,int4,int4_ort,int4_ort_layers',
                              json=True, cache=cache)
    assert decode.main(args) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out['cache'] == cache
    for p in ('int4', 'int4_torch', 'int4_ort', 'int4_ort_layers', 'int8_ort', 'int8'):
        for key in ('ms_per_token', 'floor_ms', 'fraction_of_floor', 'speedup_vs_fp32'):
            assert f'{p}_{key}' in out, (p, key)
    # the int4_* keys are the fastest INT4 path, named by int4_path
    assert out['int4_path'] in ('int4', 'int4_ort', 'int4_ort_layers')
    assert out['int4_ms_per_token'] == min(out['int4_torch_ms_per_token'],
                                           out['int4_ort_ms_per_token'],
                                           out['int4_ort_layers_ms_per_token'])
    assert set(out['cpu_ms_per_token']) == {'fp32', 'int8_ort', 'int4', 'int4_ort',
                                            'int4_ort_layers'}
    assert all(v > 0 for v in out['cpu_ms_per_token'].values())
    # torch's int8 did not run: the int8 keys are the onnxruntime INT8 graph's
    assert out['int8_path'] == 'int8_ort' and 'int8_torch_ms_per_token' not in out
    assert out['int8_ms_per_token'] == out['int8_ort_ms_per_token']
    # same codes: the same weight bytes (bf16 scale + zero vs float32 scale per group)
    for p in ('int4_ort', 'int4_ort_layers'):
        assert out['weight_mb'][p] == pytest.approx(out['weight_mb']['int4'])
    # the fastest weight stream bounds every fraction_of_peak by 1
    assert out['peak_observed_gbps'] >= max(out['effective_gbps'].values())
    assert max(out['fraction_of_peak'].values()) <= 1.0
    # a byte per INT8 weight: about twice the INT4 graph's
    assert 1.7 < out['weight_mb']['int8_ort'] / out['weight_mb']['int4_ort'] < 2.0
