"""save_quantized / load_quantized: round trips per scheme, file layout, clear errors."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors import safe_open
from torch import nn

from qail_ros import quant
from qail_ros.quant.serialization import FORMAT, QuantizedFileError, read_header


class Policy(nn.Module):
    """A small image + state policy: conv encoder, MLP, a LayerNorm and a normalisation buffer."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Flatten())
        self.mlp = nn.Sequential(nn.Linear(16 * 8 * 8, 64), nn.ReLU(), nn.Linear(64, 64),
                                 nn.LayerNorm(64), nn.Linear(64, 32))
        self.register_buffer('obs_scale', torch.tensor(0.5))

    def forward(self, x):
        return self.mlp(self.encoder(x * self.obs_scale))


def _cfg_id(c) -> str:
    """A short test id: scheme and the fields that differ from the defaults."""
    default = type(c)().to_dict()
    diff = [f'{k}={v}' for k, v in c.to_dict().items() if k != 'scheme'
            and default.get(k, object()) != v]
    return '-'.join([c.scheme, *diff])


def factory():
    return Policy()


SCHEMES = [
    quant.W4A4LSQ(), quant.W8A8LSQ(), quant.W3A3LSQ(w_granularity='per_channel'),
    quant.WeightActivationRTN(w_bits=4, a_bits=4),
    quant.WeightActivationRTN(w_bits=8, a_bits=8, a_symmetric=False),
    quant.WeightOnlyRTN(bits=4, granularity='group', group_size=32, symmetric=False,
                        exclude=['encoder.*']),
    quant.WeightOnlyRTN(bits=8),
    quant.Int4WeightOnlyAWQ(group_size=32),
]


@pytest.mark.parametrize('cfg', SCHEMES, ids=lambda c: _cfg_id(c))
def test_quantize_save_load_gives_identical_outputs(cfg, tmp_path):
    torch.manual_seed(0)
    x = torch.randn(5, 3, 8, 8)
    model = quant.quantize_(factory(), cfg, calibration=torch.randn(16, 3, 8, 8)).eval()
    path = quant.save_quantized(model, tmp_path / 'policy.safetensors')
    loaded = quant.load_quantized(factory, path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
        # the integer path, from the original and from the file, is exactly the same too
        a = quant.convert_to_integer(copy.deepcopy(model))(x)
        b = quant.convert_to_integer(loaded)(x)
    assert torch.equal(a, b)


def test_file_holds_packed_codes_and_the_config(tmp_path):
    torch.manual_seed(0)
    model = quant.quantize_(factory(), quant.W4A4LSQ(), calibration=torch.randn(8, 3, 8, 8))
    path = quant.save_quantized(model, tmp_path / 'p.safetensors')
    with safe_open(str(path), framework='pt') as f:
        meta = f.metadata()
        keys = set(f.keys())
        qweight = f.get_tensor('mlp.0.qweight')
    assert meta['format'] == FORMAT
    assert quant.config_from_dict(json.loads(meta['config'])) == quant.W4A4LSQ()
    assert qweight.dtype == torch.uint8 and qweight.shape == (64, 16 * 8 * 8 // 2)  # 2 per byte
    assert 'mlp.0.weight' not in keys                      # float weights are not stored
    assert {'mlp.3.weight', 'mlp.3.bias', 'obs_scale', 'mlp.0.input_quant.scale'} <= keys
    header = read_header(path)
    assert header['layers']['mlp.0'] == {
        'kind': 'linear', 'shape': [64, 1024], 'bits': 4, 'signed': True, 'symmetric': True,
        'granularity': 'per_tensor', 'group_size': 128, 'codes_per_row': 1024}


def test_int8_codes_take_one_byte(tmp_path):
    model = quant.quantize_(factory(), quant.WeightOnlyRTN(bits=8))
    path = quant.save_quantized(model, tmp_path / 'p.safetensors')
    with safe_open(str(path), framework='pt') as f:
        q = f.get_tensor('mlp.0.qweight')
    assert q.dtype == torch.int8 and q.shape == (64, 1024)
    layer = model.mlp[0]
    with torch.no_grad():
        codes = layer.weight_quant.int_codes(layer.weight)
    assert torch.equal(q.to(torch.int64), codes.reshape(64, -1).to(torch.int64))  # as stored
    assert int(q.min()) < 0 < int(q.max())         # signed codes, not bytes of something else


@pytest.mark.parametrize('cfg', [quant.WeightOnlyRTN(bits=4), quant.W4A4LSQ()],
                         ids=lambda c: c.scheme)
def test_load_into_an_instance_restores_codes_scales_and_outputs(cfg, tmp_path):
    """Loading into a differently initialised instance replaces every weight: the same codes,
    scales and zero points per layer, the same float parameters and buffers, the same outputs."""
    torch.manual_seed(0)
    model = quant.quantize_(factory(), cfg, calibration=torch.randn(8, 3, 8, 8)).eval()
    path = quant.save_quantized(model, tmp_path / 'p.safetensors')
    torch.manual_seed(1)
    target = Policy()
    with torch.no_grad():
        target.obs_scale.fill_(2.0)
        target.mlp[3].weight.uniform_()               # LayerNorm: a float layer
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert not torch.allclose(target(x), model(x))  # the instance starts out different
    assert quant.load_quantized(target, path) is target
    assert not target.training
    layers = {n: m for n, m in model.named_modules() if hasattr(m, 'weight_quant')}
    loaded = {n: m for n, m in target.named_modules() if hasattr(m, 'weight_quant')}
    assert sorted(loaded) == sorted(layers) and len(layers) == 4
    with torch.no_grad():
        for name, m in layers.items():
            t, wq = loaded[name], m.weight_quant
            assert torch.equal(t.weight_quant.scale, wq.scale), name
            assert torch.equal(t.weight_quant.zero_point, wq.zero_point), name
            assert torch.equal(t.weight_quant.int_codes(t.weight), wq.int_codes(m.weight)), name
            torch.testing.assert_close(t.quantized_weight(), m.quantized_weight(),
                                       rtol=0, atol=0)
            if m.input_quant is not None:
                assert torch.equal(t.input_quant.scale, m.input_quant.scale), name
        float_keys = [k for k in model.state_dict() if k.split('.')[-1] != 'weight'
                      or k.rsplit('.', 1)[0] not in layers]
        assert {'obs_scale', 'mlp.3.weight', 'mlp.3.bias', 'mlp.0.bias'} <= set(float_keys)
        want, got = model.state_dict(), target.state_dict()
        for k in float_keys:
            torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=k)
        torch.testing.assert_close(target(x), model(x), rtol=0, atol=0)


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(QuantizedFileError, match='does not exist'):
        quant.load_quantized(factory, tmp_path / 'missing.safetensors')
    bad = tmp_path / 'corrupt.safetensors'
    bad.write_bytes(b'not a safetensors file at all')
    with pytest.raises(QuantizedFileError, match='not a readable safetensors'):
        quant.load_quantized(factory, bad)
    from safetensors.torch import save_file
    other = tmp_path / 'other.safetensors'
    save_file({'w': torch.zeros(2)}, str(other))
    with pytest.raises(QuantizedFileError, match='expected'):
        quant.load_quantized(factory, other)
    with pytest.raises(QuantizedFileError, match='not quantized'):
        quant.save_quantized(Policy(), tmp_path / 'x.safetensors')
    model = quant.quantize_(factory(), quant.WeightOnlyRTN(bits=4))
    path = quant.save_quantized(model, tmp_path / 'p.safetensors')
    wrong = lambda: nn.Sequential(nn.Linear(4, 4))  # noqa: E731
    with pytest.raises(QuantizedFileError, match='wrong architecture'):
        quant.load_quantized(wrong, path)
    quant.convert_to_integer(model)
    with pytest.raises(QuantizedFileError, match='before convert_to_integer'):
        quant.save_quantized(model, tmp_path / 'y.safetensors')


def test_uncalibrated_lsq_cannot_be_saved(tmp_path):
    model = quant.quantize_(factory(), quant.W4A4LSQ())
    with pytest.raises(QuantizedFileError, match='calibrate'):
        quant.save_quantized(model, tmp_path / 'p.safetensors')
