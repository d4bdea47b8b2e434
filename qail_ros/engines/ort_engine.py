"""onnxruntime engine (CPU execution provider): FP32 graphs and static W8A8 QDQ graphs.

W8A8 graphs come from `onnxruntime.quantization.quantize_static` (uint8 activations, int8
per-channel weights, calibration from data); onnxruntime fuses each DequantizeLinear -> Conv ->
QuantizeLinear group into integer kernels (QLinearConv / MatMulInteger families), so they run
on the CPU's int8 instructions (VNNI / AMX where present).
"""
from __future__ import annotations

import numpy as np

from qail_ros.engines.base import Engine

__all__ = ['OrtEngine']


class OrtEngine(Engine):
    BACKEND = 'onnxruntime'
    PRECISIONS = ('fp32', 'w8a8', 'w4a16', 'int4')

    @classmethod
    def backend_version(cls) -> str:
        import onnxruntime
        return onnxruntime.__version__

    def _load(self) -> None:
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(self.path), opts,
                                            providers=['CPUExecutionProvider'])
        names = [i.name for i in self.session.get_inputs()]
        if sorted(names) != sorted(self.manifest.inputs):
            from qail_ros.engines.base import EngineError
            raise EngineError(f'{self.name}: graph inputs {names} differ from its '
                              f'manifest {list(self.manifest.inputs)}: rebuild the engine')

    def _infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {n: np.ascontiguousarray(inputs[n], dtype=np.float32)
                for n in self.manifest.inputs}
        outs = self.session.run(list(self.manifest.outputs), feed)
        return dict(zip(self.manifest.outputs, outs))
