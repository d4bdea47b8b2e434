"""Fake-quantized layers: nn.Linear / nn.Conv2d with quantizers on the weight and the input.

They subclass the float layers and keep `weight` / `bias` under the same names, so an FP state
dict still loads into them and optimisers see the same parameters. Quantizers live in the
submodules `weight_quant` and `input_quant` (either may be None).

When both weight and input are quantized with zero-point-free weights and one weight scale per
output channel (or per tensor), the forward is written in the factored form the integer kernels
compute:
    y = (codes(x) @ codes(W)^T) * (s_x * s_w) + b
with integer-valued float codes. It equals x_hat @ W_hat^T + b mathematically, and its float
value is the one `qail_ros.quant.integer` reproduces bit for bit (the float matmul of integer
values is exact while partial sums stay below 2^24, see docs/quantization.md).

`input_scale` (AWQ): when set, the layer computes (x / input_scale) @ Q(W')^T with
W' = W * input_scale stored as `weight`; before quantization that is exactly x @ W^T.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Self

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qail_ros.quant.quantizer import FakeQuantizer

__all__ = ['QuantLinear', 'QuantConv2d', 'QUANT_MODULES']


class _QuantMixin(nn.Module):
    weight: Tensor
    weight_quant: FakeQuantizer | None
    input_quant: FakeQuantizer | None
    input_scale: Tensor | None

    def _init_quant(self, weight_quant: FakeQuantizer | None,
                    input_quant: FakeQuantizer | None) -> None:
        self.weight_quant = weight_quant
        self.input_quant = input_quant
        self.register_buffer('input_scale', None)

    @property
    def factored(self) -> bool:
        """True when the forward is codes(x) @ codes(W)^T * scales (integer-kernel form)."""
        wq, iq = self.weight_quant, self.input_quant
        return (wq is not None and iq is not None and wq.symmetric
                and wq.granularity != 'group')

    def _observe(self, x: Tensor) -> bool:
        """Calibration: record input statistics (the layer then runs in float); else init."""
        iq = self.input_quant
        if iq is None:
            return False
        if iq.observing:
            iq.observe(x)
            return True
        iq.ensure_initialized(x)
        return False

    def _scaled_input(self, x: Tensor) -> Tensor:
        return x if self.input_scale is None else x / self.input_scale

    def _weight_term(self, wq: FakeQuantizer, make: Callable[[], Tensor]) -> Tensor:
        """`make()` (the quantized weight or its codes), cached while it cannot need a gradient.

        Cached in eval mode without grad (rollouts of the quantized policy) and whenever the
        weight and its quantizer are frozen (a QLoRA-style base under trainable adapters), so
        the weight is not re-quantized on every call. The cache is keyed on the version
        counters and storage of the weight, the scale and the zero point (optimizer steps and
        load_state_dict invalidate it) and is dropped by `train()`; it costs one weight-sized
        float tensor per layer.
        """
        frozen = not (self.weight.requires_grad or wq.scale.requires_grad)
        if not frozen and (self.training or torch.is_grad_enabled()):
            self.__dict__.pop('_wcache', None)
            return make()
        key = (self.weight._version, self.weight.data_ptr(), wq.scale._version,
               wq.scale.data_ptr(), wq.zero_point._version, wq.zero_point.data_ptr())
        cached = self.__dict__.get('_wcache')
        if cached is None or cached[0] != key:
            cached = (key, make())
            self.__dict__['_wcache'] = cached
        return cached[1]

    def train(self, mode: bool = True) -> Self:
        self.__dict__.pop('_wcache', None)
        return super().train(mode)

    def quantized_weight(self) -> Tensor:
        """The weight as the forward uses it (quantize-dequantized), detached."""
        with torch.no_grad():
            if self.weight_quant is None:
                return self.weight.detach().clone()
            return self.weight_quant(self.weight).detach()


class QuantLinear(_QuantMixin, nn.Linear):
    """nn.Linear with fake quantization of its weight and/or input."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 weight_quant: FakeQuantizer | None = None,
                 input_quant: FakeQuantizer | None = None, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._init_quant(weight_quant, input_quant)

    @classmethod
    def from_float(cls, layer: nn.Linear, weight_quant: FakeQuantizer | None,
                   input_quant: FakeQuantizer | None) -> QuantLinear:
        """Wrap `layer`, sharing its weight and bias Parameters (no copy)."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = layer.in_features, layer.out_features
        new.weight = layer.weight
        new.bias = layer.bias
        new._init_quant(weight_quant, input_quant)
        new.train(layer.training)
        return new

    def forward(self, x: Tensor) -> Tensor:
        x = self._scaled_input(x)
        if self._observe(x):
            return F.linear(x, self.weight, self.bias)
        wq, iq = self.weight_quant, self.input_quant
        if self.factored and wq is not None and iq is not None:
            s_x, s_w = iq.effective_scale(x), wq.effective_scale(self.weight)
            qx = iq.codes(x, s_x).reshape(x.shape)
            qw = self._weight_term(wq, lambda: wq.codes(self.weight, s_w).reshape(
                self.weight.shape))
            y = (F.linear(qx, qw) * (s_x * s_w.reshape(-1))).to(x.dtype)
            return y if self.bias is None else y + self.bias
        if iq is not None:
            x = iq(x)
        w = self.weight if wq is None else self._weight_term(wq, lambda: wq(self.weight))
        return F.linear(x, w, self.bias)


class QuantConv2d(_QuantMixin, nn.Conv2d):
    """nn.Conv2d (zero padding) with fake quantization of its weight and/or input."""

    @classmethod
    def from_float(cls, layer: nn.Conv2d, weight_quant: FakeQuantizer | None,
                   input_quant: FakeQuantizer | None) -> QuantConv2d:
        """Wrap `layer`, sharing its weight and bias Parameters (no copy)."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        for name in ('in_channels', 'out_channels', 'kernel_size', 'stride', 'padding',
                     'dilation', 'transposed', 'output_padding', 'groups', 'padding_mode'):
            setattr(new, name, getattr(layer, name))
        new._reversed_padding_repeated_twice = layer._reversed_padding_repeated_twice
        new.weight = layer.weight
        new.bias = layer.bias
        new._init_quant(weight_quant, input_quant)
        new.train(layer.training)
        return new

    def _conv(self, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: Tensor) -> Tensor:
        x = self._scaled_input(x)
        if self._observe(x):
            return self._conv(x, self.weight, self.bias)
        wq, iq = self.weight_quant, self.input_quant
        if self.factored and wq is not None and iq is not None:
            s_x, s_w = iq.effective_scale(x), wq.effective_scale(self.weight)
            qx = iq.codes(x, s_x).reshape(x.shape)
            qw = self._weight_term(wq, lambda: wq.codes(self.weight, s_w).reshape(
                self.weight.shape))
            y = (self._conv(qx, qw, None) * (s_x * s_w.reshape(-1)).reshape(1, -1, 1, 1)).to(
                x.dtype)
            return y if self.bias is None else y + self.bias.reshape(1, -1, 1, 1)
        if iq is not None:
            x = iq(x)
        w = self.weight if wq is None else self._weight_term(wq, lambda: wq(self.weight))
        return self._conv(x, w, self.bias)


QUANT_MODULES = (QuantLinear, QuantConv2d)
