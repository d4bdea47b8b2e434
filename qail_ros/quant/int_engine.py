"""W4A4 (and W8A8) on int8 kernels: a qail_ros.quant model run by `convert_to_integer`.

The engine file is `quant.save_quantized`'s safetensors (4-bit weight codes packed two per
byte, scales, the LSQ config in the header). Loading rebuilds the float architecture from the
manifest, re-applies the quantization (`load_quantized`) and swaps every quantized layer for
`IntConv2d` / `IntLinear`: activations are quantized to 4-bit codes, the products run on
torch._int_mm (int8 x int8 -> int32; 4-bit codes are a subset of int8) and the float epilogue
matches the fake-quant forward bit for bit (tested in test/engines/test_int_engine.py).
No x86 instruction computes 4-bit activations natively, so the speed is that of int8 GEMMs plus
the im2col of the convolutions (IntConv2d's int8 channels-last im2col); the point is 4-bit
numerics and 4-bit storage. torch._int_mm's k == 1 bug is handled in qail_ros.quant.integer.
It lives in quant (above engines): the 'torch-int8' back end of qail_ros.engines.registry.
"""
from __future__ import annotations

from qail_ros.engines.torch_engine import TorchEngine

__all__ = ['IntEngine']


class IntEngine(TorchEngine):
    """The torch engine (its version, inputs and outputs) with the quantized layers run on
    integer kernels."""

    BACKEND = 'torch-int8'
    PRECISIONS = ('w4a4', 'w8a8', 'w3a3', 'w2a4')

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
        self.dtype = torch.float32     # TorchEngine._infer feeds float32 inputs
        kept = quant.quantization_report(model).get('integer', {}).get('kept', {})
        self.kept_float = dict(kept)
