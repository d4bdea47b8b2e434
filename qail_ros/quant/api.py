"""`quantize_`: the one verb that quantizes a model in place, plus helpers around it.

    quantize_(model, config, calibration=...)   replace selected nn.Linear / nn.Conv2d layers
                                                 with fake-quantized ones and initialise them
    split_parameters(model)                      (model parameters, quantizer step parameters)
    quantization_report(model)                   what was quantized, what was left and why

Calibration data is any of: a Tensor (one batch, `model(batch)`), a tuple (positional args of one
batch), a dict (keyword args of one batch), a list of those (several batches), or a callable
`fn(model)` that runs the forward passes itself (for models with unusual inputs). It runs once,
in eval mode under no_grad, with every layer in float; the quantizers only record statistics.
"""
from __future__ import annotations

import fnmatch
import logging
from typing import Any

import torch
from torch import nn

from qail_ros.quant.config import (Int4WeightOnlyAWQ, LSQ, QuantConfig, QuantConfigError,
                                   WeightActivationRTN, WeightOnlyRTN)
from qail_ros.quant.modules import QUANT_MODULES, QuantConv2d, QuantLinear
from qail_ros.quant.modules_util import INFO_ATTR, Calibration, run_calibration, set_module
from qail_ros.quant.quantizer import FakeQuantizer

__all__ = ['quantize_', 'prepare_quantized', 'split_parameters', 'quantization_report',
           'Calibration', 'run_calibration', 'INFO_ATTR']

log = logging.getLogger('qail_ros.quant')


def _is_plain(m: nn.Module, base: type[nn.Module]) -> bool:
    """A layer we can swap safely: the base type or a subclass that keeps its forward."""
    return isinstance(m, base) and type(m).forward is base.forward


def _integer_types() -> tuple[type, ...]:
    from qail_ros.quant import integer
    return integer.INTEGER_MODULES


def _select(model: nn.Module, config: QuantConfig) -> tuple[list[str], dict[str, str]]:
    """Names of the layers to quantize, and {name: reason} for layers left alone."""
    weight_only_linear = isinstance(config, Int4WeightOnlyAWQ)
    supported: tuple[type, ...] = (nn.Linear,) if weight_only_linear else (nn.Linear, nn.Conv2d)
    already = QUANT_MODULES + _integer_types()
    inside_mha: set[str] = set()
    for name, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention):
            inside_mha.update(f'{name}.{c}' if name else c for c, _ in m.named_modules()
                              if c)
    candidates: list[str] = []
    skipped: dict[str, str] = {}
    for name, m in model.named_modules():
        if isinstance(m, already):
            raise QuantConfigError(f'layer {name or "<root>"} is already quantized '
                                   f'({type(m).__name__}): quantize a float model')
        if name in inside_mha:
            if isinstance(m, nn.Linear):
                skipped[name] = ('inside nn.MultiheadAttention, which reads the weight '
                                 'directly: not supported')
            continue
        if any(_is_plain(m, t) for t in supported):
            if isinstance(m, nn.Conv2d) and m.padding_mode != 'zeros':
                skipped[name] = f'Conv2d padding_mode={m.padding_mode!r}: only zeros supported'
                continue
            candidates.append(name)
        elif not list(m.children()) and any(True for _ in m.parameters(recurse=False)):
            skipped[name] = f'unsupported layer type {type(m).__name__}'
    chosen = []
    for name in candidates:
        if config.include and not any(fnmatch.fnmatchcase(name, p) for p in config.include):
            skipped[name] = 'not matched by include'
        elif any(fnmatch.fnmatchcase(name, p) for p in config.exclude):
            skipped[name] = 'matched by exclude'
        else:
            chosen.append(name)
    if config.keep_first_last_fp and chosen:
        for name in {chosen[0], chosen[-1]}:
            skipped[name] = 'first/last layer kept in float (keep_first_last_fp)'
        chosen = chosen[1:-1]
    return chosen, skipped


def _weight_quantizer(layer: nn.Linear | nn.Conv2d, name: str, bits: int, *, symmetric: bool,
                      granularity: str, group_size: int, learnable: bool = False,
                      init: str = 'minmax') -> FakeQuantizer:
    w = layer.weight
    per_channel_inputs = w[0].numel()
    if granularity == 'group' and per_channel_inputs % group_size:
        raise QuantConfigError(f'group_size={group_size} does not divide the {per_channel_inputs}'
                               f' inputs of layer {name}: choose a group size that divides it, '
                               'or exclude the layer')
    groups = per_channel_inputs // group_size if granularity == 'group' else 1
    q = FakeQuantizer(bits, signed=symmetric, symmetric=symmetric, granularity=granularity,
                      group_size=group_size, learnable=learnable, init=init,
                      channels=w.shape[0], groups=groups).to(w.device)
    q.init_from(w.detach())
    return q


def _input_quantizer(bits: int, *, signed: bool | None, symmetric: bool, learnable: bool,
                     init: str, device: torch.device) -> FakeQuantizer:
    """Per-tensor quantizer of a layer input; symmetric ones may pick their sign from data."""
    if not symmetric:  # min/max range with a zero point: unsigned codes
        return FakeQuantizer(bits, signed=False, symmetric=False, init=init,
                             is_weight=False).to(device)
    return FakeQuantizer(bits, signed=True if signed is None else signed, symmetric=True,
                         learnable=learnable, init=init, is_weight=False,
                         auto_sign=signed is None).to(device)


def _quantizers(layer: nn.Linear | nn.Conv2d, name: str, config: QuantConfig
                ) -> tuple[FakeQuantizer | None, FakeQuantizer | None]:
    """(weight quantizer, input quantizer) for one layer under `config`."""
    dev = layer.weight.device
    if isinstance(config, WeightOnlyRTN):
        return _weight_quantizer(layer, name, config.bits, symmetric=config.symmetric,
                                 granularity=config.granularity,
                                 group_size=config.group_size), None
    if isinstance(config, WeightActivationRTN):
        wq = None if config.w_bits is None else _weight_quantizer(
            layer, name, config.w_bits, symmetric=config.w_symmetric,
            granularity=config.w_granularity, group_size=config.group_size)
        iq = None if config.a_bits is None else _input_quantizer(
            config.a_bits, signed=config.a_signed, symmetric=config.a_symmetric,
            learnable=False, init='minmax', device=dev)
        return wq, iq
    if isinstance(config, LSQ):
        wq = None if config.w_bits is None else _weight_quantizer(
            layer, name, config.w_bits, symmetric=True, granularity=config.w_granularity,
            group_size=128, learnable=config.learn_steps, init='lsq')
        iq = None if config.a_bits is None else _input_quantizer(
            config.a_bits, signed=config.a_signed, symmetric=True,
            learnable=config.learn_steps, init='lsq', device=dev)
        return wq, iq
    raise QuantConfigError(f'no handler for config {type(config).__name__}')


def quantize_(model: nn.Module, config: QuantConfig, *,
              calibration: Calibration = None) -> nn.Module:
    """Quantize `model` in place according to `config` and return it.

    Replaces the selected nn.Linear / nn.Conv2d layers (see QuantConfig for the selection) by
    QuantLinear / QuantConv2d, sharing their weight and bias Parameters, with weight quantizers
    initialised from the weights and input quantizers from `calibration`:
      - WeightOnlyRTN: no calibration needed;
      - WeightActivationRTN, Int4WeightOnlyAWQ: calibration required (activation ranges, AWQ
        scales);
      - LSQ: activation steps from the calibration batches, or, without calibration, from the
        first training-mode forward pass (LSQ's own recipe).
    Layers of other types are left in float and listed (log + `quantization_report`). A config
    that cannot apply (wrong type, group size that does not divide a layer) raises
    QuantConfigError (a ValueError) naming the problem.
    """
    return _quantize(model, config, calibration=calibration, require_calibration=True)


def prepare_quantized(model: nn.Module, config: QuantConfig) -> nn.Module:
    """Put the quantized layers `config` selects in place without calibration, to load saved
    weights and quantizer state into (`load_quantized`); the quantizers are uninitialised."""
    return _quantize(model, config, calibration=None, require_calibration=False)


def _quantize(model: nn.Module, config: QuantConfig, *, calibration: Calibration,
              require_calibration: bool) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise QuantConfigError(f'quantize_ needs an nn.Module, got {type(model).__name__}')
    if not isinstance(config, QuantConfig):
        raise QuantConfigError(f'quantize_ needs a QuantConfig (e.g. W4A4LSQ(), '
                               f'WeightOnlyRTN()), got {type(config).__name__}')
    needs_calib = isinstance(config, (WeightActivationRTN, Int4WeightOnlyAWQ)) and (
        not isinstance(config, WeightActivationRTN) or config.a_bits is not None)
    if needs_calib and calibration is None and require_calibration:
        raise QuantConfigError(f'{type(config).__name__} needs calibration data '
                               '(quantize_(model, config, calibration=batch)) for its '
                               'activation statistics')
    chosen, skipped = _select(model, config)
    if not chosen:
        raise QuantConfigError(f'no layer of {type(model).__name__} selected for quantization '
                               f'(skipped: {skipped or "none"}): check include/exclude')
    if isinstance(config, Int4WeightOnlyAWQ):
        from qail_ros.quant.awq import apply_awq
        apply_awq(model, config, chosen, calibration, use_data=calibration is not None)
    else:
        # build every quantizer first: a config that fails on some layer leaves the model as is
        plan = []
        for name in chosen:
            layer = model.get_submodule(name)
            if not isinstance(layer, (nn.Linear, nn.Conv2d)):  # _select chose only these
                raise QuantConfigError(f'layer {name} is {type(layer).__name__}, not nn.Linear '
                                       'or nn.Conv2d')
            plan.append((name, layer, *_quantizers(layer, name, config)))
        input_quants = []
        for name, layer, wq, iq in plan:
            new = (QuantLinear.from_float(layer, wq, iq) if isinstance(layer, nn.Linear)
                   else QuantConv2d.from_float(layer, wq, iq))
            set_module(model, name, new)
            if iq is not None:
                input_quants.append((name, iq))
        if input_quants and calibration is not None:
            for _, iq in input_quants:
                iq.start_observation()
            try:
                run_calibration(model, calibration)
            finally:
                unreached = [n for n, iq in input_quants if iq._stats and iq._stats['n'] == 0]
                for _, iq in input_quants:
                    if iq._stats is not None and iq._stats['n'] > 0:
                        iq.finish_observation()
                    else:
                        iq._stats = None
            if unreached:
                raise QuantConfigError(f'calibration never reached layer(s) {unreached}: they '
                                       'are not used by forward(); exclude them')
    setattr(model, INFO_ATTR, {'config': config.to_dict(), 'layers': chosen,
                               'skipped': skipped})
    if skipped:
        log.info('quantize_: left in float: %s', '; '.join(f'{k}: {v}'
                                                           for k, v in skipped.items()))
    return model


def quantization_report(model: nn.Module) -> dict[str, Any]:
    """What quantize_ did to `model`: {'config': dict, 'layers': [quantized names],
    'skipped': {name: reason}}, plus 'integer': {'converted': {name: class}, 'kept': {name:
    reason}} after convert_to_integer."""
    info = getattr(model, INFO_ATTR, None)
    if info is None:
        raise QuantConfigError(f'{type(model).__name__} was not quantized with quantize_')
    out = {'config': dict(info['config']), 'layers': list(info['layers']),
           'skipped': dict(info['skipped'])}
    if 'integer' in info:
        out['integer'] = {k: dict(v) for k, v in info['integer'].items()}
    return out


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(model parameters, quantizer parameters): e.g. two optimiser groups, steps without decay.

    Quantizer parameters are the learned steps (LSQ `scale`) of every FakeQuantizer; model
    parameters are all the others (weights, biases, norms, ...). Frozen parameters
    (requires_grad=False) are left out of both.
    """
    q_ids = {id(p) for m in model.modules() if isinstance(m, FakeQuantizer)
             for p in m.parameters()}
    model_params: list[nn.Parameter] = []
    quant_params: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (quant_params if id(p) in q_ids else model_params).append(p)
    return model_params, quant_params
