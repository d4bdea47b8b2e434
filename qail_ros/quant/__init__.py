"""qail_ros.quant: quantize any PyTorch policy with one verb and a config dataclass.

    from qail_ros import quant
    quant.quantize_(model, quant.W4A4LSQ(), calibration=batch)     # QAT (LSQ fake quant)
    quant.quantize_(model, quant.WeightActivationRTN(w_bits=4, a_bits=4), calibration=batch)
    quant.quantize_(model, quant.Int4WeightOnlyAWQ(group_size=128), calibration=batch)
    quant.save_quantized(model, 'policy.safetensors'); quant.load_quantized(factory, path)
    quant.convert_to_integer(model)                                # real int kernels on CPU
    quant.deploy(model, 'ort')      # or 'integer' / 'ort-layers': the deployable form, one verb

Configs (this module and `config`) import no torch, so a node can read and validate one from
YAML cheaply; everything else loads torch on first use. See docs/quantization.md.
"""
from __future__ import annotations

import importlib
from typing import Any

from qail_ros.quant.config import (LSQ, QuantConfig, QuantConfigError, W3A3LSQ, W4A4LSQ,
                                   W8A8LSQ, Int4WeightOnlyAWQ, WeightActivationRTN,
                                   WeightOnlyRTN, config_from_dict, lsq_config, rtn_config)
from qail_ros.quant.deploy import TARGETS as DEPLOY_TARGETS  # torch-free
from qail_ros.quant.deploy import deploy  # binds the function over the submodule's name

__all__ = [
    # the verb and its helpers
    'quantize_', 'split_parameters', 'quantization_report',
    # configs
    'QuantConfig', 'WeightOnlyRTN', 'WeightActivationRTN', 'Int4WeightOnlyAWQ', 'LSQ',
    'W4A4LSQ', 'W8A8LSQ', 'W3A3LSQ', 'config_from_dict', 'rtn_config', 'lsq_config',
    'QuantConfigError',
    # layers
    'FakeQuantizer', 'QuantLinear', 'QuantConv2d',
    # serialisation and the integer path
    'save_quantized', 'load_quantized', 'QuantizedFileError', 'convert_to_integer',
    'deploy', 'DEPLOY_TARGETS',
]

_LAZY = {
    'quantize_': 'api', 'split_parameters': 'api', 'quantization_report': 'api',
    'FakeQuantizer': 'quantizer', 'QuantLinear': 'modules', 'QuantConv2d': 'modules',
    'save_quantized': 'serialization', 'load_quantized': 'serialization',
    'QuantizedFileError': 'serialization',
    'convert_to_integer': 'integer',
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    value = getattr(importlib.import_module(f'{__name__}.{module}'), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
