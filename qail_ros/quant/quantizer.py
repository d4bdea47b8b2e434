"""Uniform fake quantization: the integer grid, straight-through rounding, and `FakeQuantizer`.

Conventions used everywhere in qail_ros.quant (the integer kernels reproduce them exactly):
    codes q = round(clamp(x / scale + zero_point, qmin, qmax))     (round half to even)
    x_hat   = (q - zero_point) * scale
Signed b-bit codes span [-2^(b-1), 2^(b-1) - 1], unsigned ones [0, 2^b - 1]; zero_point is an
integer held in a float tensor (0 for symmetric quantizers). Because qmin/qmax and zero_point
are integers, clamping before or after rounding gives the same codes.

Gradients: round is straight-through (identity), clamp passes the gradient inside [qmin, qmax]
and blocks it outside, so d x_hat / d x = 1 inside the range and 0 where x is clipped. A learned
scale (LSQ) gets d x_hat / d s = q - x / s inside and qmin or qmax outside, times the gradient
scale g = 1 / sqrt(N * Qp) of the LSQ paper.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ['qrange', 'round_ste', 'grad_scale', 'FakeQuantizer']

_EPS = 1e-8


def qrange(bits: int, signed: bool) -> tuple[int, int]:
    """(qmin, qmax) of b-bit signed or unsigned integer codes."""
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


class _GradScale(torch.autograd.Function):
    """Identity forward (bit for bit), gradient times g backward."""

    @staticmethod
    def forward(ctx, x, g):
        ctx.g = g
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.g, None


def round_ste(x: Tensor) -> Tensor:
    """round(x) forward, identity gradient backward (straight-through estimator)."""
    return _RoundSTE.apply(x)


def grad_scale(x: Tensor, g: float) -> Tensor:
    """x forward (bits unchanged), gradient times g backward (LSQ's step-size gradient scale)."""
    return _GradScale.apply(x, g)


class FakeQuantizer(nn.Module):
    """Quantize-dequantize one tensor on a uniform grid, with fixed or learned (LSQ) scale.

    bits, signed:  the code range (see `qrange`); `signed` may be decided at calibration.
    symmetric:     zero_point fixed at 0; otherwise an integer zero point from min/max.
    granularity:   'per_tensor' | 'per_channel' (dim 0, weights) | 'group' (dim 0, then groups of
                   `group_size` consecutive elements of the flattened rest).
    learnable:     scale is an nn.Parameter trained with the LSQ gradient (else a buffer).
    init:          'lsq' (2 mean|x| / sqrt(Qp)) or 'minmax' (the RTN range).
    is_weight:     for the LSQ gradient scale: N = all elements (weights) or elements per sample
                   (activations).
    auto_sign:     at initialisation, use unsigned codes if every observed value is >= 0.

    State (all in state_dict, so a saved student reloads exactly): scale, zero_point,
    signed (bool), initialized (bool). Until initialised, calling `observe(x)` accumulates
    statistics and `finish_observation()` sets the scale; a forward in training mode on an
    uninitialised learnable quantizer initialises it from that batch (LSQ's own recipe).
    """
    scale: Tensor         # an nn.Parameter when learnable, else a buffer
    zero_point: Tensor
    signed: Tensor
    initialized: Tensor

    def __init__(self, bits: int, *, signed: bool = True, symmetric: bool = True,
                 granularity: str = 'per_tensor', group_size: int = 128,
                 learnable: bool = False, init: str = 'minmax', channels: int = 1,
                 groups: int = 1, is_weight: bool = True, auto_sign: bool = False):
        super().__init__()
        if granularity not in ('per_tensor', 'per_channel', 'group'):
            raise ValueError(f'granularity {granularity!r}: per_tensor, per_channel or group')
        if init not in ('lsq', 'minmax'):
            raise ValueError(f'init {init!r}: lsq or minmax')
        if learnable and not symmetric:
            raise ValueError('a learned (LSQ) step needs a symmetric quantizer (zero point 0)')
        self.bits = int(bits)
        self.symmetric = bool(symmetric)
        self.granularity = granularity
        self.group_size = int(group_size)
        self.learnable = bool(learnable)
        self.init = init
        self.is_weight = bool(is_weight)
        self.auto_sign = bool(auto_sign)
        shape = self._param_shape(channels, groups)
        if learnable:
            self.scale = nn.Parameter(torch.ones(shape))
        else:
            self.register_buffer('scale', torch.ones(shape))
        self.register_buffer('zero_point', torch.zeros(shape))
        self.register_buffer('signed', torch.tensor(bool(signed)))
        self.register_buffer('initialized', torch.tensor(False))
        self._signed = bool(signed)
        self._ready = False  # python mirror of `initialized`: no device sync per forward
        self._stats: dict[str, Any] | None = None  # n, count: int; the rest Tensors
        self.register_load_state_dict_post_hook(_refresh_after_load)

    def _param_shape(self, channels: int, groups: int) -> tuple[int, ...]:
        if self.granularity == 'per_tensor':
            return ()
        if self.granularity == 'per_channel':
            return (channels, 1)
        return (channels, groups, 1)

    # -- the grid -------------------------------------------------------------------------------
    @property
    def qmin(self) -> int:
        return qrange(self.bits, self._signed)[0]

    @property
    def qmax(self) -> int:
        return qrange(self.bits, self._signed)[1]

    def set_signed(self, signed: bool) -> None:
        self._signed = bool(signed)
        self.signed.fill_(bool(signed))

    def _view(self, x: Tensor) -> Tensor:
        """x reshaped so that `scale` broadcasts: (C, rest) or (C, groups, group_size)."""
        if self.granularity == 'per_tensor':
            return x
        if self.granularity == 'per_channel':
            return x.reshape(x.shape[0], -1)
        return x.reshape(x.shape[0], -1, self.group_size)

    def _grad_g(self, x: Tensor) -> float:
        """g = 1 / sqrt(N * Qp), N = values sharing one step (per sample for activations)."""
        if self.granularity != 'per_tensor':
            n = self._view(x).shape[-1]
        elif self.is_weight or x.dim() < 2:
            n = x.numel()
        else:
            n = x.numel() // x.shape[0]
        return 1.0 / math.sqrt(max(1, n) * max(1, self.qmax))

    def effective_scale(self, x: Tensor) -> Tensor:
        """The scale to use in this forward (LSQ gradient scaling applied, values unchanged)."""
        if self.learnable and torch.is_grad_enabled() and self.scale.requires_grad:
            return grad_scale(self.scale, self._grad_g(x))
        return self.scale

    def codes(self, x: Tensor, scale: Tensor | None = None) -> Tensor:
        """Centred integer codes q - zero_point (float, STE), in the shape of `_view(x)`."""
        if not self._ready:
            self._lazy_init(x)
        s = self.effective_scale(x) if scale is None else scale
        xv = self._view(x)
        q = round_ste(torch.clamp(xv / s + self.zero_point, self.qmin, self.qmax))
        return q - self.zero_point if not self.symmetric else q

    def int_codes(self, x: Tensor) -> Tensor:
        """Integer codes q (int32, no gradient), shaped like `x`."""
        with torch.no_grad():
            xv = self._view(x)
            q = torch.round(torch.clamp(xv / self.scale + self.zero_point, self.qmin, self.qmax))
        return q.to(torch.int32).reshape(x.shape)

    def forward(self, x: Tensor) -> Tensor:
        if self._stats is not None:
            self.observe(x)
            return x
        if not self._ready:
            self._lazy_init(x)
        s = self.effective_scale(x)
        return (self.codes(x, s) * s).reshape(x.shape).to(x.dtype)

    # -- initialisation -------------------------------------------------------------------------
    @property
    def observing(self) -> bool:
        return self._stats is not None

    def ensure_initialized(self, x: Tensor) -> None:
        """Initialise from `x` if needed (learnable quantizers in training mode only)."""
        if not self._ready:
            self._lazy_init(x)

    def _lazy_init(self, x: Tensor) -> None:
        if not (self.learnable and self.training):
            raise RuntimeError('quantizer used before initialisation: pass calibration data to '
                               'quantize_(..., calibration=...) or run one training-mode forward')
        self.start_observation()
        self.observe(x)
        self.finish_observation()

    @torch.no_grad()
    def set_scale(self, scale: Tensor | float, zero_point: Tensor | float | None = None) -> None:
        """Set the step (and zero point) by hand; marks the quantizer initialised."""
        self.scale.copy_(torch.as_tensor(scale, dtype=self.scale.dtype).expand_as(self.scale))
        if zero_point is not None:
            self.zero_point.copy_(torch.as_tensor(zero_point, dtype=self.zero_point.dtype)
                                  .expand_as(self.zero_point))
        self.initialized.fill_(True)
        self._ready = True

    @torch.no_grad()
    def init_from(self, x: Tensor) -> None:
        """Set scale (and zero point) from one tensor, e.g. a weight."""
        self.start_observation()
        self.observe(x)
        self.finish_observation()

    def start_observation(self) -> None:
        self._stats = {'n': 0}

    @torch.no_grad()
    def observe(self, x: Tensor) -> None:
        """Accumulate the statistics the init needs (sum |x|, min, max) over batches."""
        st = self._stats
        assert st is not None
        x = x.detach().float()
        # reduce the last dim of a (1, all) / (C, rest) / (C, groups, group_size) view
        xv = x.reshape(1, -1) if self.granularity == 'per_tensor' else self._view(x)
        dims, count = (xv.dim() - 1,), xv.shape[-1]
        abs_sum = xv.abs().sum(dim=dims, keepdim=True)
        mn = xv.amin(dim=dims, keepdim=True)
        mx = xv.amax(dim=dims, keepdim=True)
        if st['n'] == 0:
            st.update(abs_sum=abs_sum, count=count, mn=mn, mx=mx)
        else:
            st['abs_sum'] = st['abs_sum'] + abs_sum
            st['count'] = st['count'] + count
            st['mn'] = torch.minimum(st['mn'], mn)
            st['mx'] = torch.maximum(st['mx'], mx)
        st['n'] += 1

    @torch.no_grad()
    def finish_observation(self) -> None:
        """Turn the statistics into scale / zero point (and, with auto_sign, pick the sign)."""
        st, self._stats = self._stats, None
        if not st or st['n'] == 0:
            raise RuntimeError('no data observed: the calibration forward passes never reached '
                               'this layer')
        mn, mx = st['mn'], st['mx']
        shape = self.scale.shape
        if self.auto_sign:
            self.set_signed(bool((mn < 0).any()))
        if self.init == 'lsq':
            mean_abs = st['abs_sum'] / st['count']
            scale = 2.0 * mean_abs / math.sqrt(self.qmax)
            zero = torch.zeros_like(scale)
        elif self.symmetric:
            amax = torch.maximum(mx.abs(), mn.abs()) if self._signed else mx.clamp_min(0)
            scale = amax / self.qmax
            zero = torch.zeros_like(scale)
        else:
            mn, mx = mn.clamp_max(0), mx.clamp_min(0)
            scale = (mx - mn) / (self.qmax - self.qmin)
            scale = scale.clamp_min(_EPS)
            zero = torch.clamp(self.qmin - torch.round(mn / scale), self.qmin, self.qmax)
        self.scale.copy_(scale.clamp_min(_EPS).reshape(shape))
        self.zero_point.copy_(zero.reshape(shape))
        self.initialized.fill_(True)
        self._ready = True

    def extra_repr(self) -> str:
        kind = 'lsq' if self.learnable else 'static'
        sign = 'signed' if self._signed else 'unsigned'
        sym = 'symmetric' if self.symmetric else 'asymmetric'
        gran = self.granularity + (f'({self.group_size})' if self.granularity == 'group' else '')
        return f'bits={self.bits}, {sign}, {sym}, {gran}, {kind}'


def _refresh_after_load(module: FakeQuantizer, incompatible) -> None:
    module._signed = bool(module.signed)
    module._ready = bool(module.initialized)
