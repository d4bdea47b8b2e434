"""FP32 / BF16 torch engine: a safetensors state dict + the architecture in the manifest."""
from __future__ import annotations

import numpy as np

from qail_ros.engines.base import Engine

__all__ = ['TorchEngine']


class TorchEngine(Engine):
    """The reference: the float torch module (fp32), or the same cast to bfloat16 (bf16)."""

    BACKEND = 'torch'
    PRECISIONS: tuple[str, ...] = ('fp32', 'bf16')

    @classmethod
    def backend_version(cls) -> str:
        import torch
        return torch.__version__

    def _load(self) -> None:
        import torch
        from safetensors.torch import load_file

        from qail_ros.engines.registry import architecture_factory
        torch.set_num_threads(self.threads)
        arch = self.manifest.architecture
        model = architecture_factory(arch['name'])(arch.get('config', {}))
        model.load_state_dict(load_file(str(self.path)))
        self.dtype = torch.bfloat16 if self.precision == 'bf16' else torch.float32
        self.model = model.to(self.dtype).eval()

    def _infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch
        with torch.inference_mode():
            args = [torch.from_numpy(np.ascontiguousarray(inputs[n], np.float32)).to(self.dtype)
                    for n in self.manifest.inputs]
            outs = self.model(*args)
        outs = outs if isinstance(outs, (tuple, list)) else (outs,)
        return {n: o.float().numpy() for n, o in zip(self.manifest.outputs, outs)}
