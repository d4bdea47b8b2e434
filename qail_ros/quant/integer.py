"""The integer CPU execution path: fake-quantized layers swapped for layers on integer kernels.

    convert_to_integer(model)   QuantLinear / QuantConv2d -> the layers below, in place

Static weight + activation quantization (W8A8, W4A4, W3A3, ... from LSQ or
WeightActivationRTN): `IntLinear` / `IntConv2d` quantize the input to integer codes, run an
int8 x int8 -> int32 matrix product (`torch._int_mm`; the convolution as im2col + the same
product) and apply the float epilogue acc * (s_x * s_w) + b. Codes of 4 bits and less are a
subset of int8, so W4A4 runs on the int8 kernel with 4-bit numerics. Unsigned 8-bit activation
codes [0, 255] are shifted by 128 into int8 and corrected exactly with the weights' row sums;
zero points are handled the same way. The result is bit-exact to the fake-quant forward of
`QuantLinear` / `QuantConv2d` (same codes, same epilogue) as long as the float matmul of the fake
path is exact, i.e. every partial sum of codes stays below 2^24 in magnitude: always for W4A4
up to 2^24 / (16 * 8) = 131072 inputs per output, and for W8A8 when k * 255 * 128 < 2^24 (k <= 513)
or, beyond that, whenever the actual sums stay small (the usual case; see the tests).

Weight-only quantization (WeightOnlyRTN, Int4WeightOnlyAWQ):
  - `Int4WeightOnlyLinear` (<= 4 bits) runs torch's CPU int4 kernel
    `aten._weight_int4pack_mm_for_cpu` (weights [n, k/2] uint8 after
    `_convert_weight_to_int4pack_for_cpu`, group sizes 32/64/128/256 with (scale, zero) pairs,
    w = (q - 8) * scale + zero; needs n % 16 == 0). A per-channel or larger group is expressed
    by repeating its scale over kernel groups; shapes the kernel cannot take fall back to a
    dequantized float matmul (same numbers, no speed-up).
    Float32 inputs run the kernel in bfloat16 by default (`compute_dtype`): its float32 path is
    slow.
  - `Int8WeightOnlyLinear` (5..8 bits) stores int8 codes and by default computes with the
    weight dequantized once; `use_kernel=True` runs `torch._weight_int8pack_mm` (symmetric, one
    scale per output channel, float32 activations: its bf16 path returns wrong values and can
    crash in torch 2.13), which is slower than FP32 here.
Their outputs agree with the fake-quant forward to float rounding in the input's dtype (not
bit for bit: the kernels dequantize in their own order); with bfloat16 compute, to bfloat16
precision.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qail_ros.quant.modules import QuantConv2d, QuantLinear
from qail_ros.quant.modules_util import INFO_ATTR, set_module
from qail_ros.quant.packing import pack_int4, unpack_int4

__all__ = ['convert_to_integer', 'IntLinear', 'IntConv2d', 'Int4WeightOnlyLinear',
           'Int8WeightOnlyLinear', 'WeightOnlyLinear', 'INTEGER_MODULES',
           'int4_kernel_available']

log = logging.getLogger('qail_ros.quant')

_INT4_KERNEL_GROUPS = (256, 128, 64, 32)


def int4_kernel_available() -> bool:
    """True when this torch has the CPU int4 weight-only kernel."""
    return (hasattr(torch.ops.aten, '_weight_int4pack_mm_for_cpu')
            and hasattr(torch.ops.aten, '_convert_weight_to_int4pack_for_cpu'))


def _int_mm(a: Tensor, b: Tensor) -> Tensor:
    """int8 (m, k) @ int8 (k, n) -> int32, on torch._int_mm or an exact int32 fallback.

    torch 2.13's CPU `_int_mm` returns garbage when k == 1 (measured: every k >= 2 tested up to
    100 is exact), so k == 1 (e.g. a scalar speed input) takes the int32 matmul.
    """
    if hasattr(torch, '_int_mm') and a.shape[1] > 1:
        return torch._int_mm(a, b)
    return a.to(torch.int32) @ b.to(torch.int32)


class _StaticActMixin(nn.Module):
    """Input quantization and the integer product shared by IntLinear and IntConv2d."""
    qweight: Tensor
    w_scale: Tensor
    x_scale: Tensor
    x_zero: Tensor
    bias: Tensor | None
    _wt: Tensor
    _corr: Tensor | None
    _out_scale: Tensor

    def _init_static(self, m: QuantLinear | QuantConv2d) -> None:
        wq, iq = m.weight_quant, m.input_quant
        if wq is None or iq is None:
            raise ValueError(f'{type(self).__name__} needs a layer with weight and input '
                             'quantizers (weight-only layers: Int4/Int8WeightOnlyLinear)')
        codes = wq.int_codes(m.weight.detach()).reshape(m.weight.shape[0], -1)
        self.bits_w, self.bits_a = wq.bits, iq.bits
        self.qmin, self.qmax = iq.qmin, iq.qmax
        # int8 shift: codes [0, 255] (unsigned 8-bit) do not fit int8; q - 128 does.
        self.offset = 128 if (self.qmin < -128 or self.qmax > 127) else 0
        self.register_buffer('qweight', codes.to(torch.int8))
        self.register_buffer('w_scale', wq.scale.detach().clone())
        self.register_buffer('x_scale', iq.scale.detach().clone())
        self.register_buffer('x_zero', iq.zero_point.detach().clone())
        self.register_buffer('bias', None if m.bias is None else m.bias.detach().clone())
        # B of _int_mm as the transposed view of the (n, k) weight: ~5x faster on CPU than a
        # contiguous (k, n) copy (measured, torch 2.13, 4096x4096, batch 1)
        self.register_buffer('_wt', self.qweight.t(), persistent=False)
        shift = self.offset - int(self.x_zero)
        corr = None if shift == 0 else codes.sum(dim=1).to(torch.int32) * shift
        self.register_buffer('_corr', corr, persistent=False)
        self.register_buffer('_out_scale', self.x_scale * self.w_scale.reshape(-1),
                             persistent=False)

    def _codes(self, x: Tensor) -> Tensor:
        """round(clamp(x / s + z)) exactly as FakeQuantizer.codes computes it (float)."""
        return torch.round(torch.clamp(x / self.x_scale + self.x_zero, self.qmin, self.qmax))

    def _matmul(self, q2d: Tensor) -> Tensor:
        acc = _int_mm(q2d.to(torch.int8), self._wt)
        return acc if self._corr is None else acc + self._corr


class IntLinear(_StaticActMixin, nn.Module):
    """Linear layer on int8 kernels: static per-tensor input codes, per-tensor/channel weights."""

    def __init__(self, m: QuantLinear):
        super().__init__()
        self.in_features, self.out_features = m.in_features, m.out_features
        self._init_static(m)

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        q = self._codes(x.reshape(-1, self.in_features)) - self.offset
        y = (self._matmul(q).to(torch.float32) * self._out_scale).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f'in_features={self.in_features}, out_features={self.out_features}, '
                f'w{self.bits_w}a{self.bits_a}, int8 kernel')


class IntConv2d(_StaticActMixin, nn.Module):
    """Conv2d (groups=1, zero padding) as im2col + the int8 product of IntLinear."""
    _wt_hwc: Tensor

    def __init__(self, m: QuantConv2d):
        super().__init__()
        self.out_channels = m.out_channels
        self.kernel_size, self.stride = tuple(m.kernel_size), tuple(m.stride)
        if isinstance(m.padding, str):
            raise ValueError('Conv2d with string padding has no integer path')
        self.padding, self.dilation = tuple(m.padding), tuple(m.dilation)
        self._init_static(m)
        # weight columns in the (kh, kw, C) order of the channels-last im2col, as _int_mm's B
        kh, kw = self.kernel_size
        w_hwc = self.qweight.reshape(self.out_channels, -1, kh, kw).permute(0, 2, 3, 1)
        self.register_buffer('_wt_hwc', w_hwc.reshape(self.out_channels, -1).contiguous().t(),
                             persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """Int8 channels-last im2col from kh*kw strided slice copies, then the int8 product.

        Builds the columns from int8 NHWC codes instead of F.unfold on float codes (a 6-d
        strided gather, ~75 % of a 3x3 convolution's time; this is ~2-3x faster per conv on
        CPU). Integer sums are exact in any order, so the output equals the fake-quant
        forward bit for bit. The result is a channels-last view of (n, out, ho, wo).
        """
        n, c, h, w = x.shape
        q = (self._codes(x) - self.offset).to(torch.int8).permute(0, 2, 3, 1)
        ph, pw = self.padding
        if ph or pw:  # pad with the code of 0.0 (z - offset), as conv zero-pads x
            padded = torch.full((n, h + 2 * ph, w + 2 * pw, c),
                                int(float(self.x_zero)) - self.offset, dtype=torch.int8)
            padded[:, ph:ph + h, pw:pw + w] = q
            q = padded
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        if kh == kw == 1:
            cols = q[:, ::sh, ::sw][:, :ho, :wo].reshape(n * ho * wo, c)
        else:
            cols = torch.empty((n, ho, wo, kh * kw, c), dtype=torch.int8)
            for i in range(kh):
                for j in range(kw):
                    cols[:, :, :, i * kw + j] = q[:, i * dh:i * dh + (ho - 1) * sh + 1:sh,
                                                  j * dw:j * dw + (wo - 1) * sw + 1:sw]
            cols = cols.reshape(n * ho * wo, kh * kw * c)
        acc = _int_mm(cols, self._wt_hwc)
        if self._corr is not None:
            acc = acc + self._corr
        y = (acc.to(torch.float32) * self._out_scale).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(n, ho, wo, self.out_channels).permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return (f'out_channels={self.out_channels}, kernel_size={self.kernel_size}, '
                f'stride={self.stride}, padding={self.padding}, '
                f'w{self.bits_w}a{self.bits_a}, int8 kernel (int8 NHWC im2col)')


class WeightOnlyLinear(nn.Module):
    """Base of the weight-only integer layers (Int4WeightOnlyLinear, Int8WeightOnlyLinear):
    per-group scale / zero point, optional bias and AWQ input scale, `codes()` and
    `dequantized_weight()`."""
    bias: Tensor | None
    input_scale: Tensor | None
    scale: Tensor
    zero_point: Tensor
    qweight: Tensor

    def _init_common(self, m: QuantLinear) -> Tensor:
        wq = m.weight_quant
        if wq is None:
            raise ValueError(f'{type(self).__name__} needs a layer with a weight quantizer')
        self.in_features, self.out_features = m.in_features, m.out_features
        self.bits = wq.bits
        self.signed = wq._signed
        self.register_buffer('bias', None if m.bias is None else m.bias.detach().clone())
        self.register_buffer('input_scale', None if m.input_scale is None
                             else m.input_scale.detach().clone())
        n, k = m.weight.shape
        groups = wq.scale.shape[1] if wq.granularity == 'group' else 1
        self.group_size = k // groups

        def per_group(t: Tensor) -> Tensor:  # () / (n, 1) / (n, G, 1) -> (n, G)
            t = t.detach()
            return (t.expand(n, groups) if t.dim() == 0 else t.reshape(n, groups)).contiguous()
        self.register_buffer('scale', per_group(wq.scale))
        self.register_buffer('zero_point', per_group(wq.zero_point))
        return wq.int_codes(m.weight.detach())

    def codes(self) -> Tensor:
        """The integer weight codes q, (n, k) int32."""
        raise NotImplementedError

    def dequantized_weight(self) -> Tensor:
        """(q - z) * s as a float (n, k) tensor."""
        codes = self.codes().float().reshape(self.out_features, -1, self.group_size)
        w = (codes - self.zero_point[..., None]) * self.scale[..., None]
        return w.reshape(self.out_features, self.in_features)

    def _prep(self, x: Tensor) -> Tensor:
        x = x.reshape(-1, self.in_features)
        return x if self.input_scale is None else x / self.input_scale.to(x.dtype)

    def _finish(self, y: Tensor, shape) -> Tensor:
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*shape[:-1], self.out_features)


class _Int4MM(torch.autograd.Function):
    """The int4 kernel with a backward for the input (QLoRA over a frozen INT4 base).

    torch has no derivative for `_weight_int4pack_mm_for_cpu`; grad_x = grad_y @ W with W
    dequantized on the fly (not kept, to keep the memory of a 4-bit model). The weight itself
    is frozen: no gradient.
    """

    @staticmethod
    def forward(ctx, x, layer, dtype):
        ctx.layer = layer
        return layer._kernel_mm(x, dtype)

    @staticmethod
    def backward(ctx, grad):
        w = ctx.layer.dequantized_weight().to(grad.dtype)
        return grad @ w, None, None


class Int4WeightOnlyLinear(WeightOnlyLinear):
    """Weight-only linear with <= 4-bit codes: torch's CPU int4 kernel, or a float fallback.

    `compute_dtype` (default bfloat16): float32 inputs are cast to it for the kernel and the
    result cast back, because the kernel's float32 path is ~10x slower than FP32 nn.Linear
    while its bfloat16 path is ~10x faster (docs/quantization.md). Set it to None to run the
    kernel in the input's own dtype (float32 accuracy, slow).
    """

    def __init__(self, m: QuantLinear, compute_dtype: torch.dtype | None = torch.bfloat16):
        super().__init__()
        self.compute_dtype = compute_dtype
        codes = self._init_common(m)
        self.register_buffer('qweight', pack_int4(codes, signed=self.signed))
        self.kernel_group = self._kernel_group()
        self._packed: Tensor | None = None
        self._sz: dict[torch.dtype, Tensor] = {}
        self._dequant: Tensor | None = None
        if self.kernel_group:
            self._prepare_kernel(codes)

    def codes(self) -> Tensor:
        return unpack_int4(self.qweight, self.in_features, signed=self.signed).to(torch.int32)

    def _kernel_group(self) -> int:
        n, k, g = self.out_features, self.in_features, self.group_size
        if not int4_kernel_available() or n % 16 or k % 2:
            return 0
        for kg in _INT4_KERNEL_GROUPS:
            if g % kg == 0 and k % kg == 0:
                return kg
        return 0

    def _prepare_kernel(self, codes: Tensor) -> None:
        q_tg = codes + 8 if self.signed else codes  # tinygemm codes in [0, 15]
        self._packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
            q_tg.to(torch.int32).contiguous(), 1)
        rep = self.group_size // self.kernel_group
        scale = self.scale.float().repeat_interleave(rep, dim=1)       # (n, k / kg)
        zero = (8.0 - self.zero_point.float()).repeat_interleave(rep, dim=1) * scale \
            if not self.signed else torch.zeros_like(scale)
        self._sz[torch.float32] = torch.stack([scale.t(), zero.t()], dim=-1).contiguous()

    @property
    def uses_kernel(self) -> bool:
        return self._packed is not None

    def _kernel_mm(self, x2: Tensor, dtype: torch.dtype) -> Tensor:
        sz = self._sz.get(dtype)
        if sz is None:
            sz = self._sz[dtype] = self._sz[torch.float32].to(dtype)
        return torch.ops.aten._weight_int4pack_mm_for_cpu(
            x2.to(dtype).contiguous(), self._packed, self.kernel_group, sz).to(x2.dtype)

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x2 = self._prep(x)
        if self._packed is not None and x2.dtype in (torch.float32, torch.bfloat16,
                                                     torch.float16) and x2.device.type == 'cpu':
            dtype = self.compute_dtype or x2.dtype
            if torch.is_grad_enabled() and x2.requires_grad:
                y = _Int4MM.apply(x2, self, dtype)
            else:
                y = self._kernel_mm(x2, dtype)
        else:
            if self._dequant is None:
                self._dequant = self.dequantized_weight()
            y = F.linear(x2, self._dequant.to(x2.dtype))
        return self._finish(y, shape)

    def extra_repr(self) -> str:
        path = f'int4 kernel (group {self.kernel_group})' if self.uses_kernel else 'dequant'
        return (f'in_features={self.in_features}, out_features={self.out_features}, '
                f'w{self.bits} group_size={self.group_size}, {path}')


class Int8WeightOnlyLinear(WeightOnlyLinear):
    """Weight-only linear with 5..8-bit codes, stored as int8 / uint8 bytes.

    Default: a float matmul with the weight dequantized once (cached), because torch 2.13's
    CPU `_weight_int8pack_mm` is 3x slower than FP32 nn.Linear at batch 1 and far slower at
    larger batches (docs/quantization.md). `use_kernel=True` runs that kernel (symmetric
    per-channel/per-tensor weights, float32 activations only).
    """

    def __init__(self, m: QuantLinear, use_kernel: bool = False):
        super().__init__()
        codes = self._init_common(m)
        self.register_buffer('qweight', codes.to(torch.int8 if self.signed else torch.uint8))
        self._kernel = (use_kernel and self.signed and self.group_size == self.in_features
                        and hasattr(torch, '_weight_int8pack_mm'))
        self._kscale = self.scale[:, 0].float().contiguous() if self._kernel else None
        self._dequant: dict[torch.dtype, Tensor] = {}

    def codes(self) -> Tensor:
        return self.qweight.to(torch.int32)

    @property
    def uses_kernel(self) -> bool:
        return self._kernel

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x2 = self._prep(x)
        if self._kscale is not None and x2.device.type == 'cpu':  # set iff self._kernel
            y = torch._weight_int8pack_mm(x2.float().contiguous(), self.qweight,
                                          self._kscale).to(x2.dtype)
        else:
            w = self._dequant.get(x2.dtype)
            if w is None:
                w = self._dequant[x2.dtype] = self.dequantized_weight().to(x2.dtype)
            y = F.linear(x2, w)
        return self._finish(y, shape)

    def extra_repr(self) -> str:
        path = 'int8 kernel' if self._kernel else 'dequant'
        return (f'in_features={self.in_features}, out_features={self.out_features}, '
                f'w{self.bits}, {path}')


INTEGER_MODULES = (IntLinear, IntConv2d, Int4WeightOnlyLinear, Int8WeightOnlyLinear)


def _integer_module(m: QuantLinear | QuantConv2d, int4_compute_dtype: torch.dtype | None,
                    int8_weight_kernel: bool) -> tuple[nn.Module | None, str]:
    """(integer replacement, '') or (None, reason it stays fake-quantized)."""
    wq, iq = m.weight_quant, m.input_quant
    if wq is None:
        return None, 'activation-only quantization has no integer kernel'
    if iq is None:
        if not isinstance(m, QuantLinear):
            return None, 'weight-only Conv2d: no integer kernel (stays fake-quantized)'
        if wq.bits <= 4:
            return Int4WeightOnlyLinear(m, compute_dtype=int4_compute_dtype), ''
        return Int8WeightOnlyLinear(m, use_kernel=int8_weight_kernel), ''
    if not m.factored:
        return None, ('weights and activations quantized but weights are asymmetric or '
                      'group-wise: integer kernels need symmetric per-tensor/channel weights')
    if m.input_scale is not None:
        return None, 'input_scale with activation quantization is not supported'
    if not bool(iq.initialized):
        return None, 'input quantizer not initialised (calibrate first)'
    if isinstance(m, QuantConv2d):
        if m.groups != 1 or isinstance(m.padding, str):
            return None, 'Conv2d with groups > 1 or string padding: no integer path'
        return IntConv2d(m), ''
    return IntLinear(m), ''


@torch.no_grad()
def convert_to_integer(model: nn.Module, *,
                       int4_compute_dtype: torch.dtype | None = torch.bfloat16,
                       int8_weight_kernel: bool = False) -> nn.Module:
    """Swap every fake-quantized layer for its integer-kernel layer, in place; return model.

    int4_compute_dtype: activation dtype inside the int4 weight-only kernel (None = the
    input's dtype; bfloat16 is ~10x faster for float32 inputs). int8_weight_kernel: run 8-bit
    weight-only layers on torch._weight_int8pack_mm instead of a cached dequantized weight.

    Layers that have no integer path stay fake-quantized and are listed (log and
    `quantization_report(model)['integer']`). The converted model is for inference only.
    """
    converted, kept = {}, {}
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, (QuantLinear,
                                                                          QuantConv2d))]
    if not targets:
        raise ValueError(f'{type(model).__name__} has no fake-quantized layers: run quantize_ '
                         '(or load_quantized) before convert_to_integer')
    for name, m in targets:
        new, reason = _integer_module(m, int4_compute_dtype, int8_weight_kernel)
        if new is None:
            kept[name] = reason
            continue
        if not name:
            raise ValueError('the model itself is a quantized layer: wrap it in nn.Sequential '
                             'to convert it')
        set_module(model, name, new)
        converted[name] = type(new).__name__
    info = getattr(model, INFO_ATTR, None)
    if info is not None:
        info['integer'] = {'converted': converted, 'kept': kept}
    if kept:
        log.info('convert_to_integer: kept fake-quantized: %s', kept)
    return model.eval()
