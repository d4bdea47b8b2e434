"""LoRA adapters over frozen quantized layers."""
import pytest
import torch
from torch import nn

from qail_ros import quant
from qail_ros.quant.lora import (LoRALinear, add_lora, adapter_fraction, load_lora,
                                 lora_parameters, save_lora)


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64))


def test_fresh_adapters_change_nothing_and_only_they_train():
    m = model()
    x = torch.randn(5, 64)
    ref = m(x)
    params = add_lora(m, rank=4)
    assert torch.equal(m(x), ref)
    assert {id(p) for p in params} == {id(p) for p in m.parameters() if p.requires_grad}
    assert all(isinstance(m[i], LoRALinear) for i in (0, 2))
    assert adapter_fraction(m) == pytest.approx(4 * (64 + 128) * 2 / (2 * 64 * 128))


def test_adapters_survive_int4_conversion_and_round_trip(tmp_path):
    m = model()
    quant.quantize_(m, quant.WeightOnlyRTN(bits=4, granularity='per_channel'))
    add_lora(m, rank=4)
    with torch.no_grad():
        for p in lora_parameters(m):
            p.normal_(0, 0.1)
    x = torch.randn(3, 64)
    fake = m(x)
    path = save_lora(m, tmp_path / 'a.safetensors')
    quant.convert_to_integer(m)
    assert type(m[0].base).__name__ == 'Int4WeightOnlyLinear'
    kernel = m(x)
    assert (kernel - fake).abs().max() < 0.05 * fake.abs().max()
    other = model()
    quant.quantize_(other, quant.WeightOnlyRTN(bits=4, granularity='per_channel'))
    add_lora(other, rank=4)
    load_lora(other, path)
    torch.testing.assert_close(other(x), fake)


def test_mismatched_adapters_are_refused(tmp_path):
    m = model()
    add_lora(m, rank=4)
    path = save_lora(m, tmp_path / 'a.safetensors')
    other = model()
    add_lora(other, rank=8)
    with pytest.raises(ValueError, match='same rank|shape'):
        load_lora(other, path)
    bare = model()
    with pytest.raises(ValueError, match='nothing to adapt|no LoRA|do not match'):
        load_lora(bare, path)
    with pytest.raises(ValueError, match='nothing to adapt'):
        add_lora(nn.Sequential(nn.ReLU()), rank=2)
