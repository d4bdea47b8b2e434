"""Quantization configs: validation with reasons, YAML round trip, torch-free import."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from qail_ros import quant
from qail_ros.quant import config_from_dict

ROOT = Path(__file__).resolve().parents[2]

CONFIGS = [
    quant.WeightOnlyRTN(),
    quant.WeightOnlyRTN(bits=3, granularity='group', group_size=64, symmetric=False,
                        exclude=['head.*']),
    quant.WeightActivationRTN(w_bits=4, a_bits=4),
    quant.WeightActivationRTN(w_bits=None, a_bits=8, a_symmetric=False),
    quant.Int4WeightOnlyAWQ(group_size=32, alpha_grid=10, include=['backbone.*']),
    quant.W4A4LSQ(),
    quant.W8A8LSQ(keep_first_last_fp=True),
    quant.W3A3LSQ(a_signed=False),
    quant.LSQ(w_bits=2, a_bits=None, w_granularity='per_channel', learn_steps=False),
]


@pytest.mark.parametrize('cfg', CONFIGS, ids=lambda c: c.scheme)
def test_yaml_round_trip(cfg):
    text = yaml.safe_dump(cfg.to_dict())
    back = config_from_dict(yaml.safe_load(text))
    assert back == cfg
    assert type(back) is type(cfg)
    assert json.loads(json.dumps(cfg.to_dict())) == cfg.to_dict()


def test_presets_are_lsq_with_bits():
    assert quant.W4A4LSQ() == quant.LSQ(w_bits=4, a_bits=4)
    assert (quant.W8A8LSQ().w_bits, quant.W8A8LSQ().a_bits) == (8, 8)
    assert (quant.W3A3LSQ().w_bits, quant.W3A3LSQ().a_bits) == (3, 3)
    assert quant.W4A4LSQ().w_granularity == 'per_tensor'   # the paper's per-tensor W4A4


def test_bit_helpers():
    assert quant.rtn_config(4, 4) == quant.WeightActivationRTN(w_bits=4, a_bits=4)
    assert quant.rtn_config(4, 16) == quant.WeightOnlyRTN(bits=4)
    assert quant.lsq_config(4, 32) == quant.LSQ(w_bits=4, a_bits=None)
    assert quant.lsq_config(16, 8) == quant.LSQ(w_bits=None, a_bits=8)
    with pytest.raises(ValueError, match='nothing to quantize'):
        quant.rtn_config(16, 16)


@pytest.mark.parametrize('make, reason', [
    (lambda: quant.WeightOnlyRTN(bits=1), 'bit widths must be integers in 2..8'),
    (lambda: quant.WeightOnlyRTN(bits=16), '2..8'),
    (lambda: quant.WeightOnlyRTN(bits=4.0), '2..8'),
    (lambda: quant.WeightOnlyRTN(granularity='per_row'), 'choose one of'),
    (lambda: quant.WeightOnlyRTN(granularity='group', group_size=100), 'power of two'),
    (lambda: quant.WeightActivationRTN(w_bits=None, a_bits=None), 'nothing to quantize'),
    (lambda: quant.WeightActivationRTN(w_granularity='group'), 'integer kernels'),
    (lambda: quant.LSQ(w_granularity='group'), 'choose one of'),
    (lambda: quant.LSQ(w_bits=None, a_bits=None), 'nothing to quantize'),
    (lambda: quant.Int4WeightOnlyAWQ(granularity='per_tensor'), 'choose one of'),
    (lambda: quant.Int4WeightOnlyAWQ(alpha_grid=0), 'alpha_grid'),
    (lambda: quant.LSQ(include=['']), 'module name patterns'),
    (lambda: quant.LSQ(keep_first_last_fp='yes'), 'true or false'),
    (lambda: config_from_dict({'w_bits': 4}), 'no "scheme" key'),
    (lambda: config_from_dict({'scheme': 'gptq'}), 'unknown quantization scheme'),
    (lambda: config_from_dict({'scheme': 'lsq', 'wbits': 4}), 'unknown lsq config key'),
])
def test_bad_configs_raise_value_error_with_reason(make, reason):
    with pytest.raises(ValueError, match=reason):
        make()


def test_include_accepts_a_single_string():
    assert quant.LSQ(include='net.*').include == ('net.*',)


def test_config_import_is_torch_free():
    code = ('import sys, qail_ros.quant as q; q.W4A4LSQ().to_dict(); '
            'print("torch" in sys.modules)')
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == 'False'


def test_every_public_name_resolves():
    for name in quant.__all__:
        assert getattr(quant, name) is not None, name
