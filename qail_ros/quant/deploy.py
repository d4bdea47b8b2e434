"""`deploy`: a fake-quantized model -> the form that runs it (the second verb after quantize_).

    from qail_ros import quant
    quant.quantize_(model, quant.WeightOnlyRTN(bits=4, granularity='per_channel'))
    model = quant.deploy(model, 'integer')              # torch's int4 / int8 kernels, in place
    decoder = quant.deploy(llama, 'ort', threads=4)     # the Llama decoder: one onnxruntime graph
    model = quant.deploy(model, 'ort-layers')           # one MatMulNBits session per linear

Targets:
  integer     every fake-quantized layer swapped for its integer-kernel layer
              (`convert_to_integer`: torch's int4 weight-only kernel, torch._int_mm for W8A8 /
              W4A4, torch._weight_int8pack_mm with `int8_weight_kernel`); returns the model
  ort         a Llama causal LM (`model.model.layers`, `model.model.norm`, `model.lm_head`)
              whose linears are weight-only quantized -> `OrtLlamaDecoder` (layers, final norm
              and lm_head in one onnxruntime graph with an in-place KV cache). The graph owns
              those weights afterwards: the torch layers, norm and lm_head are freed (replaced
              by an empty ModuleList / Identity) and the decoder is returned
  ort-layers  each INT4 weight-only linear on its own onnxruntime MatMulNBits session inside
              the torch forward (`convert_to_ort_int4`); returns the model
`config` (+ `calibration`) quantizes first (`quantize_`), so one call turns a float model into
its deployable form. onnxruntime / onnx are imported only for the 'ort' targets.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from qail_ros.quant.config import QuantConfig

__all__ = ['deploy', 'TARGETS']

#: deploy targets -> what they run on
TARGETS: dict[str, str] = {
    'integer': "torch's integer kernels (convert_to_integer)",
    'ort': 'the Llama decoder as one onnxruntime graph (OrtLlamaDecoder)',
    'ort-layers': 'one onnxruntime MatMulNBits session per linear (convert_to_ort_int4)',
}

_DTYPES = ('bfloat16', 'float32', 'float16')


def deploy(model: nn.Module, target: str = 'integer', *, config: QuantConfig | None = None,
           calibration: Any = None, threads: int = 1, accuracy_level: int = 4,
           capacity: int = 320, prefill: str = 'auto', device: str = 'cpu',
           int4_compute_dtype: str | None = 'bfloat16',
           int8_weight_kernel: bool = False) -> Any:
    """Turn the fake-quantized `model` into its deployable form on `target` (see the module
    docstring); with `config`, quantize it first (`quantize_(model, config, calibration)`).

    threads, accuracy_level (4: int8 activations per block, 1: float32), capacity (KV cache
    positions), prefill ('auto' | 'int8' | 'nbits') and device ('cpu' | 'cuda') are the
    onnxruntime targets'; int4_compute_dtype ('bfloat16', 'float32', 'float16' or None = the
    input's) and int8_weight_kernel the 'integer' target's. Raises ValueError naming the
    target or the missing quantization.
    """
    if target not in TARGETS:
        raise ValueError(f'deploy target {target!r}: choose one of {sorted(TARGETS)}')
    if config is not None:
        from qail_ros.quant.api import quantize_
        quantize_(model, config, calibration=calibration)
    if target == 'integer':
        import torch

        from qail_ros.quant.integer import convert_to_integer
        if int4_compute_dtype is not None and int4_compute_dtype not in _DTYPES:
            raise ValueError(f'int4_compute_dtype {int4_compute_dtype!r}: choose one of '
                             f'{list(_DTYPES)} or None')
        dtype = None if int4_compute_dtype is None else getattr(torch, int4_compute_dtype)
        return convert_to_integer(model, int4_compute_dtype=dtype,
                                  int8_weight_kernel=int8_weight_kernel)
    if target == 'ort-layers':
        if device != 'cpu':
            raise ValueError(f"device {device!r} needs the graph target 'ort'")
        from qail_ros.quant.ort_int4 import convert_to_ort_int4
        return convert_to_ort_int4(model, threads=int(threads), accuracy_level=accuracy_level)
    from torch import nn as torch_nn

    from qail_ros.quant.ort_llama import OrtLlamaDecoder
    decoder = OrtLlamaDecoder(model, threads=int(threads), accuracy_level=accuracy_level,
                              capacity=int(capacity), device=device, prefill=prefill)
    inner: Any = model.model
    inner.layers = torch_nn.ModuleList()        # the graph owns the decoder's weights now
    inner.norm = torch_nn.Identity()
    model.lm_head = torch_nn.Identity()
    return decoder
