"""AWQ: activation-aware weight quantization for weight-only INT4 linear layers.

For a layer y = x W^T and calibration inputs X (rows = tokens or samples):
    m_j     = mean |X[:, j]|                          per input channel
    s(a)    = m^a / sqrt(max(m^a) * min(m^a))         a in {0, 1/n, ..., 1}, n = alpha_grid
    W_q(a)  = Q(W * s(a)) / s(a)                      Q = group-wise (or per-channel) RTN
    a*      = argmin_a || X W^T - X W_q(a)^T ||^2     (a = 0 is plain RTN, so AWQ <= RTN on X)
The layer then stores W' = W * s(a*) as its weight, a quantizer initialised on W', and
`input_scale` = s(a*), computing (x / s) @ Q(W')^T: before quantization exactly x @ W^T.
(The original AWQ folds 1/s into the preceding LayerNorm or Linear; keeping it inside the layer
works for any model at the cost of one elementwise division.) AWQ's extra weight-clipping search
is not done. Inputs of every layer are collected in one float forward pass of the calibration
data.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from qail_ros.quant.config import Int4WeightOnlyAWQ, QuantConfigError
from qail_ros.quant.modules import QuantLinear
from qail_ros.quant.modules_util import Calibration, run_calibration, set_module
from qail_ros.quant.quantizer import FakeQuantizer

__all__ = ['apply_awq', 'awq_search']


def _make_quantizer(config: Int4WeightOnlyAWQ, weight: Tensor, name: str) -> FakeQuantizer:
    k = weight.shape[1]
    if config.granularity == 'group' and k % config.group_size:
        raise QuantConfigError(f'group_size={config.group_size} does not divide the {k} inputs '
                               f'of layer {name}: choose a group size that divides it, or '
                               'exclude the layer')
    groups = k // config.group_size if config.granularity == 'group' else 1
    return FakeQuantizer(config.bits, signed=config.symmetric, symmetric=config.symmetric,
                         granularity=config.granularity, group_size=config.group_size,
                         channels=weight.shape[0], groups=groups).to(weight.device)


@torch.no_grad()
def awq_search(weight: Tensor, x: Tensor, quantizer: FakeQuantizer,
               alpha_grid: int = 20) -> tuple[Tensor, float, list[float]]:
    """(per-input-channel scale s, best alpha, output MSE per alpha) for one linear layer.

    `quantizer` is (re)initialised on W * s for every alpha and left initialised on the best.
    """
    w = weight.detach().float()
    x = x.float()
    ref = x @ w.t()
    mean_abs = x.abs().mean(dim=0).clamp_min(1e-8)
    errors: list[float] = []
    best = (math.inf, 0.0, torch.ones_like(mean_abs))
    for i in range(alpha_grid + 1):
        alpha = i / alpha_grid
        s = mean_abs.pow(alpha)
        s = s / torch.sqrt(s.max() * s.min())
        if alpha == 0:
            s = torch.ones_like(mean_abs)
        ws = w * s
        quantizer.init_from(ws)
        wq = quantizer(ws) / s
        err = float(((x @ wq.t() - ref) ** 2).mean())
        errors.append(err)
        if err < best[0]:
            best = (err, alpha, s)
    _, alpha, s = best
    quantizer.init_from(w * s)
    return s, alpha, errors


def _linear(model: nn.Module, name: str) -> nn.Linear:
    layer = model.get_submodule(name)
    if not isinstance(layer, nn.Linear):  # quantize_ selects only nn.Linear for AWQ
        raise QuantConfigError(f'layer {name} is {type(layer).__name__}: AWQ quantizes '
                               'nn.Linear layers only')
    return layer


def _collect_inputs(model: nn.Module, names: list[str], calibration: Calibration,
                    max_samples: int) -> dict[str, Tensor]:
    store: dict[str, list[Tensor]] = {n: [] for n in names}
    hooks = []
    for name in names:
        layer = _linear(model, name)

        def hook(mod, args, name=name, k=layer.in_features):
            store[name].append(args[0].detach().reshape(-1, k).float().cpu())
        hooks.append(layer.register_forward_pre_hook(hook))
    try:
        run_calibration(model, calibration)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for name, chunks in store.items():
        if not chunks:
            raise QuantConfigError(f'calibration never reached layer {name}: it is not used by '
                                   'forward(); exclude it')
        x = torch.cat(chunks)
        if x.shape[0] > max_samples:  # evenly spaced rows: deterministic, covers the batch
            idx = torch.linspace(0, x.shape[0] - 1, max_samples).round().long()
            x = x[idx]
        out[name] = x
    return out


def apply_awq(model: nn.Module, config: Int4WeightOnlyAWQ, names: list[str],
              calibration: Calibration, *, use_data: bool = True) -> dict[str, float]:
    """Replace the named nn.Linear layers with AWQ-scaled weight-only INT4 QuantLinear layers.

    Returns {layer name: chosen alpha}. With use_data=False (rebuilding the architecture to load
    saved weights) the layers get unit scales and uninitialised quantizers.
    """
    for name in names:  # fail before touching the model
        _make_quantizer(config, _linear(model, name).weight, name)
    inputs = _collect_inputs(model, names, calibration, config.max_samples) if use_data else {}
    alphas = {}
    for name in names:
        layer = _linear(model, name)
        wq = _make_quantizer(config, layer.weight, name)
        new = QuantLinear.from_float(layer, wq, None)
        if use_data:
            x = inputs[name].to(layer.weight.device)
            s, alpha, _ = awq_search(layer.weight, x, wq, config.alpha_grid)
            with torch.no_grad():
                layer.weight.mul_(s.to(layer.weight.dtype))
            new.input_scale = s.to(layer.weight.dtype)
            alphas[name] = alpha
        else:
            new.input_scale = torch.ones(layer.in_features, dtype=layer.weight.dtype,
                                         device=layer.weight.device)
        set_module(model, name, new)
    return alphas
