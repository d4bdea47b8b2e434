"""A stand-in fake quantizer for the QAIL tests: they must not depend on qail_ros.quant."""
import torch
from torch import nn


class _Round(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, g):
        return g


class FakeQuantLinear(nn.Module):
    """Symmetric per-tensor fake quantization of weights and inputs, learned steps (LSQ-like)."""

    def __init__(self, linear: nn.Linear, bits: int, calib: torch.Tensor):
        super().__init__()
        self.linear = linear
        self.q = 2 ** (bits - 1) - 1
        self.w_step = nn.Parameter(linear.weight.detach().abs().max() / self.q)
        self.a_step = nn.Parameter(calib.detach().abs().max().clamp_min(1e-3) / self.q)

    def _fq(self, x, step):
        return _Round.apply(torch.clamp(x / step, -self.q - 1, self.q)) * step

    def forward(self, x):
        return nn.functional.linear(self._fq(x, self.a_step), self._fq(self.linear.weight,
                                    self.w_step), self.linear.bias)


def fake_quantize(model, config, calib):
    """Stand-in for qail_ros.quant.quantize_: wraps every nn.Linear of model.net."""
    x = calib
    for i, m in enumerate(model.net):
        if isinstance(m, nn.Linear):
            model.net[i] = FakeQuantLinear(m, config.weight_bits, x)
        x = m(x)
    return model
