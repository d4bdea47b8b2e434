"""W4A4 (and W8A8) on int8 kernels: a qail_ros.quant model run by `convert_to_integer`.

The engine file is `quant.save_quantized`'s safetensors (4-bit weight codes packed two per
byte, scales, the LSQ config in the header). Loading rebuilds the float architecture from the
manifest, re-applies the quantization (`load_quantized`) and swaps every quantized layer for
`IntConv2d` / `IntLinear`: activations are quantized to 4-bit codes, the products run on
torch._int_mm (int8 x int8 -> int32; 4-bit codes are a subset of int8) and the float epilogue
matches the fake-quant forward bit for bit (tested in test/engines/test_int_engine.py).
No x86 instruction computes 4-bit activations natively, so the speed is that of int8 GEMMs plus
the im2col of the convolutions; the point is 4-bit numerics and 4-bit storage.

The engine swaps IntConv2d's float `F.unfold` im2col for an int8, channels-last one built from
kh*kw strided slice copies (`_fast_int8_im2col`: ~3x faster per 3x3 convolution here, the
same integers and the same float epilogue, so still bit-exact; tested). It belongs in
qail_ros.quant.integer; until it lands there it lives here.
"""
from __future__ import annotations

import numpy as np

from qail_ros.engines.base import Engine

__all__ = ['IntEngine']


class IntEngine(Engine):
    BACKEND = 'torch-int8'
    PRECISIONS = ('w4a4', 'w8a8', 'w3a3', 'w2a4')

    @classmethod
    def backend_version(cls) -> str:
        import torch
        return torch.__version__

    def _factory(self):
        from qail_ros.engines.registry import architecture_factory
        arch = self.manifest.architecture
        return lambda: architecture_factory(arch['name'])(arch.get('config', {}))

    def reference_model(self):
        """The fake-quant model this engine must equal bit for bit (tests, debugging)."""
        from qail_ros import quant
        return quant.load_quantized(self._factory(), str(self.path)).eval()

    def _load(self) -> None:
        import torch

        from qail_ros import quant
        torch.set_num_threads(self.threads)
        model = self.reference_model()
        self.model = quant.convert_to_integer(model)
        _guard_k1_products(self.model)
        self.fast_im2col = _fast_int8_im2col(self.model)
        kept = quant.quantization_report(model).get('integer', {}).get('kept', {})
        self.kept_float = dict(kept)

    def _infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch
        with torch.inference_mode():
            args = [torch.from_numpy(np.ascontiguousarray(inputs[n], np.float32))
                    for n in self.manifest.inputs]
            outs = self.model(*args)
        outs = outs if isinstance(outs, (tuple, list)) else (outs,)
        return {n: o.numpy() for n, o in zip(self.manifest.outputs, outs)}


def _guard_k1_products(model) -> None:
    """torch 2.13's CPU torch._int_mm returns wrong values when k == 1 (a (n, 1) x (1, m)
    product: CILRS's speed input layer Linear(1, 128)); run those few layers as an exact
    int32 matmul instead (same integers, so still bit-exact). Measured here: k >= 2 is right.
    """
    import types

    import torch

    from qail_ros.quant import integer

    def exact_matmul(self, q2d):
        acc = q2d.to(torch.int32) @ self._wt.to(torch.int32)
        return acc if self._corr is None else acc + self._corr

    for m in model.modules():
        if isinstance(m, integer.IntLinear) and m.in_features == 1:
            m._matmul = types.MethodType(exact_matmul, m)


def _fast_int8_im2col(model) -> int:
    """Give every IntConv2d an int8 NHWC im2col forward (bit-exact); returns how many.

    IntConv2d.forward unfolds the float codes with F.unfold (a 6-d strided gather, ~75 % of
    a 3x3 convolution's time at 900x256 here). This forward casts the codes to int8 first,
    keeps them channels-last and builds the columns from kh*kw contiguous slice copies;
    the weight columns are permuted to (kh, kw, C) order once. Integer sums are exact in any
    order and the epilogue is IntConv2d's (acc -> float * (s_x * s_w) + b per element), so the
    output equals IntConv2d's bit for bit. The output is a channels-last view, which the next
    layer's codes turn back into contiguous NHWC without a copy.
    """
    import types

    import torch

    from qail_ros.quant import integer

    def forward(self, x):
        n, c, h, w = x.shape
        q = (self._codes(x) - self.offset).to(torch.int8).permute(0, 2, 3, 1)
        ph, pw = self.padding
        if ph or pw:
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
        acc = integer._int_mm(cols, self._wt_hwc)
        if self._corr is not None:
            acc = acc + self._corr
        y = acc.to(x.dtype) * self._out_scale
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(n, ho, wo, self.out_channels).permute(0, 3, 1, 2)

    count = 0
    for m in model.modules():
        if isinstance(m, integer.IntConv2d):
            kh, kw = m.kernel_size
            w_hwc = m.qweight.reshape(m.out_channels, -1, kh, kw).permute(0, 2, 3, 1)
            m._wt_hwc = w_hwc.reshape(m.out_channels, -1).contiguous().t()
            m.forward = types.MethodType(forward, m)
            count += 1
    return count
