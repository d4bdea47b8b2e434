"""Save and load quantized models: safetensors with packed integer weights and a JSON header.

File layout (one .safetensors file):
  header metadata  'format'   = 'qail_ros.quant/1'
                   'config'   = JSON of the quantization config (`to_dict()`, 'scheme' key)
                   'layers'   = JSON {layer name: {'kind', 'shape', 'bits', 'signed', ...}}
                   'torch'    = torch version that wrote it
  tensors          '<layer>.qweight'   packed weight codes: two 4-bit codes per byte (<= 4 bits,
                                       see packing.py) or one int8 / uint8 per byte
                   '<layer>.weight_quant.scale' / '.zero_point', '<layer>.input_quant.*'
                                       scales, integer zero points, sign and init flags
                   '<layer>.input_scale'  AWQ per-input-channel scales
                   everything else of the model's state dict (biases, float layers, buffers)
The float latent weights of a QAT model are not stored (only their codes): a loaded model
computes exactly what the saved one did, but to resume training, save its state_dict instead.

`load_quantized(model_or_factory, path)` re-applies the config to a float model of the same
architecture (no calibration needed), writes the dequantized codes back as weights (quantizing
them again gives the same codes) and loads the rest, so the outputs are identical.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qail_ros.errors import QailRosError
from qail_ros.quant.config import config_from_dict
from qail_ros.quant.modules import QuantConv2d, QuantLinear
from qail_ros.quant.modules_util import INFO_ATTR
from qail_ros.quant.packing import pack_codes, unpack_codes

__all__ = ['save_quantized', 'load_quantized', 'QuantizedFileError', 'FORMAT']

FORMAT = 'qail_ros.quant/1'


class QuantizedFileError(QailRosError, ValueError):
    """A quantized model file that is missing, corrupt, or does not fit the given model."""


def _layers(model: nn.Module) -> dict[str, QuantLinear | QuantConv2d]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (QuantLinear, QuantConv2d))}


@torch.no_grad()
def save_quantized(model: nn.Module, path: str | Path) -> Path:
    """Write a model quantized with `quantize_` (fake-quant form) to `path` (.safetensors)."""
    from safetensors.torch import save_file

    from qail_ros.quant.integer import INTEGER_MODULES
    info = getattr(model, INFO_ATTR, None)
    if info is None:
        raise QuantizedFileError(f'{type(model).__name__} was not quantized with quantize_: '
                                 'nothing to save as a quantized model')
    if any(isinstance(m, INTEGER_MODULES) for m in model.modules()):
        raise QuantizedFileError('save_quantized needs the fake-quantized model: save before '
                                 'convert_to_integer (load_quantized + convert_to_integer gives '
                                 'the integer model back)')
    layers = _layers(model)
    state = {k: v for k, v in model.state_dict().items()}
    meta_layers = {}
    for name, m in layers.items():
        prefix = f'{name}.' if name else ''
        wq = m.weight_quant
        entry: dict[str, Any] = {'kind': 'conv2d' if isinstance(m, QuantConv2d) else 'linear',
                                 'shape': list(m.weight.shape)}
        if wq is not None:
            if not bool(wq.initialized):
                raise QuantizedFileError(f'layer {name}: weight quantizer not initialised')
            codes = wq.int_codes(m.weight.detach()).reshape(m.weight.shape[0], -1)
            state.pop(prefix + 'weight')
            state[prefix + 'qweight'] = pack_codes(codes, wq.bits, signed=wq._signed)
            entry.update(bits=wq.bits, signed=wq._signed, symmetric=wq.symmetric,
                         granularity=wq.granularity, group_size=wq.group_size,
                         codes_per_row=codes.shape[1])
        if m.input_quant is not None and not bool(m.input_quant.initialized):
            raise QuantizedFileError(f'layer {name}: input quantizer not initialised: '
                                     'calibrate (or train) before saving')
        meta_layers[name] = entry
    seen: dict[int, str] = {}
    tensors = {}
    for k, v in state.items():
        v = v.detach().contiguous()
        if v.data_ptr() in seen and v.numel():
            v = v.clone()  # tied / shared tensors: safetensors wants distinct storage
        seen[v.data_ptr()] = k
        tensors[k] = v
    metadata = {'format': FORMAT, 'config': json.dumps(info['config']),
                'layers': json.dumps(meta_layers), 'torch': torch.__version__}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


def read_header(path: str | Path) -> dict:
    """The metadata of a quantized file: {'format', 'config' (dict), 'layers' (dict), 'torch'}."""
    from safetensors import safe_open
    path = Path(path)
    if not path.is_file():
        raise QuantizedFileError(f'quantized model file {path} does not exist')
    try:
        with safe_open(str(path), framework='pt') as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own types for corrupt headers
        raise QuantizedFileError(f'{path} is not a readable safetensors file ({exc}): '
                                 're-export it with save_quantized') from exc
    if meta.get('format') != FORMAT:
        raise QuantizedFileError(f'{path} has format {meta.get("format")!r}, expected '
                                 f'{FORMAT!r}: write it with qail_ros.quant.save_quantized')
    return {'format': meta['format'], 'config': json.loads(meta['config']),
            'layers': json.loads(meta['layers']), 'torch': meta.get('torch')}


@torch.no_grad()
def load_quantized(model_or_factory: nn.Module | Callable[[], nn.Module],
                   path: str | Path) -> nn.Module:
    """Rebuild a quantized model from `path` on a float model (or a factory that makes one).

    The float model must have the architecture that was quantized; its weights are replaced.
    Returns the fake-quantized model in eval mode; `convert_to_integer` it for the int kernels.
    """
    from safetensors.torch import load_file

    from qail_ros.quant.api import prepare_quantized
    header = read_header(path)
    model = model_or_factory if isinstance(model_or_factory, nn.Module) else model_or_factory()
    if not isinstance(model, nn.Module):
        raise QuantizedFileError(f'load_quantized needs an nn.Module or a factory returning '
                                 f'one, got {type(model).__name__}')
    config = config_from_dict(header['config'])
    prepare_quantized(model, config)
    layers = _layers(model)
    if sorted(layers) != sorted(header['layers']):
        raise QuantizedFileError(f'{path} holds quantized layers {sorted(header["layers"])} but '
                                 f'the model quantizes {sorted(layers)}: wrong architecture')
    tensors = load_file(str(path))
    for name, entry in header['layers'].items():
        m = layers[name]
        prefix = f'{name}.' if name else ''
        if list(m.weight.shape) != entry['shape']:
            raise QuantizedFileError(f'layer {name}: file has weight shape {entry["shape"]}, '
                                     f'model has {list(m.weight.shape)}: wrong architecture')
        if 'bits' in entry:
            packed = tensors.pop(prefix + 'qweight', None)
            if packed is None:
                raise QuantizedFileError(f'{path}: {prefix}qweight missing (corrupt file)')
            codes = unpack_codes(packed, entry['bits'], entry['codes_per_row'],
                                 signed=entry['signed'])
            wq = m.weight_quant
            if wq is None:
                raise QuantizedFileError(f'{path}: layer {name} has quantized weights but the '
                                         'model built from its config quantizes none: wrong '
                                         'file or architecture')
            view = wq._view(codes.float())
            scale = tensors[prefix + 'weight_quant.scale'].to(view.dtype)
            zero = tensors[prefix + 'weight_quant.zero_point'].to(view.dtype)
            weight = ((view - zero) * scale).reshape(m.weight.shape)
            tensors[prefix + 'weight'] = weight.to(m.weight.dtype)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise QuantizedFileError(f'{path} does not fit the model: missing {missing}, '
                                 f'unexpected {unexpected}')
    return model.eval()
