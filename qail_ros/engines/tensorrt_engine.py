"""TensorRT engine for NVIDIA GPUs (Jetson Orin, desktop GPUs), imported only when used.

Build: `build_plan(onnx_path, plan_path, precision)` parses the ONNX graph (the FP32 export, or
the W8A8 QDQ graph: TensorRT takes the QDQ scales as explicit INT8 quantization) and serialises
a plan. A plan is tied to the TensorRT version and the GPU (compute capability), so
`VERSION_BOUND` is True: `load_engine` refuses a plan built elsewhere and the EngineCache (whose
key holds both) rebuilds it. Not tested on this machine (no GPU, no tensorrt package).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from qail_ros.engines.base import Engine, EngineError

__all__ = ['TensorRTEngine', 'build_plan', 'tensorrt_available']


def tensorrt_available() -> bool:
    import importlib.util
    return importlib.util.find_spec('tensorrt') is not None


def _trt():
    try:
        import tensorrt
    except ImportError:
        raise EngineError('the tensorrt engine needs the tensorrt Python package and an NVIDIA '
                          'GPU (JetPack on Jetson, `pip install tensorrt` on x86 with CUDA): '
                          'use an onnxruntime or torch engine on this machine') from None
    return tensorrt


def build_plan(onnx_path: str | Path, plan_path: str | Path, precision: str,
               workspace_mb: int = 1024) -> Path:
    """Serialise a TensorRT plan from an ONNX file: 'fp32', 'fp16', 'w8a8' (QDQ graph)."""
    trt = _trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = '; '.join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f'TensorRT cannot parse {onnx_path}: {errors}')
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if precision == 'fp16':
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == 'w8a8':
        config.set_flag(trt.BuilderFlag.INT8)   # explicit quantization from the QDQ nodes
        config.set_flag(trt.BuilderFlag.FP16)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError(f'TensorRT could not build a {precision} plan from {onnx_path}')
    Path(plan_path).write_bytes(bytes(plan))
    return Path(plan_path)


class TensorRTEngine(Engine):
    BACKEND = 'tensorrt'
    PRECISIONS = ('fp32', 'fp16', 'w8a8')
    VERSION_BOUND = True

    @classmethod
    def backend_version(cls) -> str:
        return _trt().__version__ if tensorrt_available() else 'absent'

    def _load(self) -> None:
        import torch  # CUDA buffers; torch with CUDA is part of every GPU install here
        trt = _trt()
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(self.file.read_bytes())
        if self.engine is None:
            raise EngineError(f'TensorRT could not deserialise {self.path}: rebuild the plan')
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self.buffers = {}
        for name, spec in {**self.manifest.inputs, **self.manifest.outputs}.items():
            self.buffers[name] = torch.empty(spec['shape'], dtype=torch.float32, device='cuda')
            self.context.set_tensor_address(name, self.buffers[name].data_ptr())

    def _infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch
        for name in self.manifest.inputs:
            self.buffers[name].copy_(torch.from_numpy(np.asarray(inputs[name], np.float32)))
        self.context.execute_async_v3(self.stream.cuda_stream)
        self.stream.synchronize()
        return {n: self.buffers[n].cpu().numpy() for n in self.manifest.outputs}
