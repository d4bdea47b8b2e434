"""The same policy at several precisions, for the monitor's comparison report.

`make_variant(policy, 'int8-dynamic')` is the image policy at that precision;
qail_ros.bench.monitor.run_image_policy_sessions runs the image_policy node with each variant
and records a monitor session per variant (`qail-ros monitor --report DIR --image-policy ...`).

Variants (what this CPU-only machine can run; the real comparison is FP32 vs W8A8 vs W4A4
engines on a Jetson):
  fp32          the network as is
  int8-dynamic  torch.ao dynamic quantization: nn.Linear weights int8, activations quantized
                per batch at run time; the convolutions stay FP32 (dynamic quantization has no
                conv kernels), so only the FiLM/MLP head changes
  bf16          weights and activations in bfloat16 (the whole network)
"""
from __future__ import annotations

import numpy as np

from qail_ros.errors import QailRosError

__all__ = ['VARIANTS', 'make_variant']

VARIANTS = ('fp32', 'int8-dynamic', 'bf16')


class _Bf16Policy:
    """ConvActionRegressor in bfloat16 behind the same predict_with_raw()."""

    def __init__(self, policy):
        import torch
        self.policy = policy.to(torch.bfloat16)
        self.config = policy.config

    def predict_with_raw(self, frame, instruction: str = ''):
        import torch
        p = self.policy
        with torch.inference_mode():
            emb = p.embed_instruction(instruction) if p.film is not None else None
            x = p.preprocess(frame).to(torch.bfloat16)
            raw = p.head_outputs(x, None if emb is None else emb.to(torch.bfloat16))[0].float()
            return (torch.tanh(raw).numpy().astype(np.float32), raw.numpy().astype(np.float32))

    def predict(self, frame, instruction: str = ''):
        return self.predict_with_raw(frame, instruction)[0]


def make_variant(policy, variant: str):
    """The policy at `variant` precision (see the module docstring)."""
    import copy

    import torch
    if variant == 'fp32':
        return policy
    if variant == 'int8-dynamic':
        from torch.ao.quantization import quantize_dynamic
        return quantize_dynamic(copy.deepcopy(policy), {torch.nn.Linear}, dtype=torch.qint8)
    if variant == 'bf16':
        return _Bf16Policy(copy.deepcopy(policy))
    raise QailRosError(f"unknown variant {variant!r}: choose from {', '.join(VARIANTS)}")
