"""OpenVINO engine (CPU plugin; x86 and ARM): FP32, BF16 and INT8 (NNCF) networks.

The engine file (`.ovz`) is the OpenVINO IR in one file: an uncompressed zip holding
`model.xml` (the graph) and `model.bin` (the weights), so the manifest's sha256 covers both
and the cache's write-then-rename stays atomic (`unzip` gives the IR OpenVINO's own tools
read). Built from an ONNX graph (`convert_onnx`, `ov.convert_model`):
  fp32  the graph as is, compiled with INFERENCE_PRECISION_HINT f32
  bf16  the same FP32 graph compiled with INFERENCE_PRECISION_HINT bf16: the CPU plugin then
        computes in bfloat16 where the CPU has it (AVX512-BF16 / AMX / ARM BF16) and in f32
        elsewhere (the manifest records what this CPU did)
  w8a8  NNCF post-training quantization (`nncf_int8`): int8 weights per channel and int8
        activations per tensor calibrated on data (recorded frames for a deployed engine),
        fast bias correction; the CPU plugin runs its int8 kernels (VNNI / AMX / SDOT)
The compile settings (threads, LATENCY hint, one stream, inference precision) come from the
manifest's details (`compile`) and the caller's thread count. openvino and nncf are imported
only when an engine of this back end is built or loaded (`pip install openvino nncf`).
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from qail_ros.engines.base import Engine, EngineError

__all__ = ['OpenVINOEngine', 'openvino_available', 'nncf_available', 'convert_onnx',
           'save_ir', 'read_ir', 'nncf_int8', 'SUFFIX', 'PRECISIONS', 'bf16_native']

SUFFIX = '.ovz'
PRECISIONS = ('fp32', 'bf16', 'w8a8')
_HINTS = {'fp32': 'f32', 'bf16': 'bf16', 'w8a8': 'f32'}
_INSTALL = ('the openvino back end needs the openvino package (and nncf to build INT8 '
            'engines): pip install "qail_ros[openvino]" (openvino, nncf), or use an '
            'onnxruntime or torch engine')


def openvino_available() -> bool:
    import importlib.util
    return importlib.util.find_spec('openvino') is not None


def nncf_available() -> bool:
    import importlib.util
    return openvino_available() and importlib.util.find_spec('nncf') is not None


def bf16_native() -> bool:
    """True when this CPU computes bfloat16 natively (the bf16 engine is then fast)."""
    from qail_ros.engines.base import cpu_features
    return bool({'avx512_bf16', 'amx_bf16', 'bf16'} & set(cpu_features())) or \
        'amx_int8' in cpu_features()


def _ov():
    try:
        import openvino
    except ImportError:
        raise EngineError(_INSTALL) from None
    return openvino


def convert_onnx(onnx_path: str | Path):
    """An ov.Model from an ONNX file (FP32 or a QDQ graph)."""
    return _ov().convert_model(str(onnx_path))


def save_ir(model, path: str | Path) -> Path:
    """Write an ov.Model as one `.ovz` file (zip of model.xml + model.bin, stored)."""
    import tempfile
    ov = _ov()
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix='qail-ov-') as tmp:
        xml = Path(tmp) / 'model.xml'
        ov.save_model(model, str(xml), compress_to_fp16=False)
        with zipfile.ZipFile(path, 'w', compression=zipfile.ZIP_STORED) as z:
            for name in ('model.xml', 'model.bin'):
                info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
                z.writestr(info, (Path(tmp) / name).read_bytes())
    return path


def read_ir(path: str | Path) -> tuple[bytes, bytes]:
    """(xml bytes, weight bytes) of an `.ovz` file; EngineError when it is not one."""
    try:
        with zipfile.ZipFile(path) as z:
            return z.read('model.xml'), z.read('model.bin')
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise EngineError(f'{path} is not an OpenVINO engine file (a zip of model.xml + '
                          f'model.bin: {exc}): rebuild it') from None


def nncf_int8(model, samples: Sequence[dict[str, np.ndarray]], *, preset: str | None = None,
              fast_bias_correction: bool = True, ignored_types: Iterable[str] = (),
              ignored_patterns: Iterable[str] = (), subset_size: int | None = None):
    """NNCF post-training INT8 quantization of an ov.Model on calibration `samples` (each a
    name -> array feed of batch 1). Defaults are NNCF's own (preset PERFORMANCE: symmetric
    activations; per-channel weights), with every sample used (subset_size)."""
    try:
        import nncf
    except ImportError:
        raise EngineError(_INSTALL) from None
    samples = list(samples)
    if not samples:
        raise EngineError('INT8 quantization needs calibration samples: give recorded frames '
                          '(--calibration DATASET)')
    kwargs: dict[str, Any] = {'subset_size': int(subset_size or len(samples)),
                              'fast_bias_correction': fast_bias_correction}
    if preset:
        kwargs['preset'] = getattr(nncf.QuantizationPreset, preset.upper())
    types, patterns = list(ignored_types), list(ignored_patterns)
    if types or patterns:
        kwargs['ignored_scope'] = nncf.IgnoredScope(types=types, patterns=patterns,
                                                    validate=False)
    import logging
    logging.getLogger('nncf').setLevel(logging.WARNING)
    return nncf.quantize(model, nncf.Dataset(samples), **kwargs)


def ir_details(model) -> dict[str, Any]:
    """Counts of the quantization nodes of an ov.Model (FakeQuantize / FakeConvert)."""
    ops: dict[str, int] = {}
    for op in model.get_ops():
        t = op.get_type_name()
        if t in ('FakeQuantize', 'Convolution', 'MatMul'):
            ops[t] = ops.get(t, 0) + 1
    return {'ops': ops}


class OpenVINOEngine(Engine):
    """An `.ovz` IR compiled by OpenVINO's CPU plugin (see the module docstring)."""

    BACKEND = 'openvino'
    PRECISIONS = PRECISIONS

    @classmethod
    def backend_version(cls) -> str:
        ov = _ov()
        return ov.get_version().split('-')[0]

    def compile_config(self) -> dict[str, Any]:
        cfg = {'INFERENCE_PRECISION_HINT': _HINTS.get(self.precision, 'f32'),
               'PERFORMANCE_HINT': 'LATENCY', 'NUM_STREAMS': '1',
               **(self.manifest.details.get('compile') or {})}
        cfg['INFERENCE_NUM_THREADS'] = str(self.threads)
        return {k: str(v) for k, v in cfg.items()}

    def _load(self) -> None:
        ov = _ov()
        if self.device not in ('cpu', 'CPU'):
            raise EngineError(f'the openvino engine runs on the CPU here, not {self.device!r}')
        xml, weights = read_ir(self.file)
        core = ov.Core()
        model = core.read_model(model=xml, weights=ov.Tensor(np.frombuffer(weights, np.uint8)))
        self.compiled = core.compile_model(model, 'CPU', self.compile_config())
        self.request = self.compiled.create_infer_request()
        # a port may carry several tensor names (OpenVINO merges them): match any of them
        names = [set(i.get_names()) for i in self.compiled.inputs]
        self._inputs = {}
        for n in self.manifest.inputs:
            port = next((i for i, ns in zip(self.compiled.inputs, names) if n in ns), None)
            if port is None or len(names) != len(self.manifest.inputs):
                raise EngineError(f'{self.name}: graph inputs {[sorted(x) for x in names]}'
                                  f' differ from its manifest {list(self.manifest.inputs)}: '
                                  'rebuild the engine')
            self._inputs[n] = port
        self._outputs = {n: self.compiled.output(n) for n in self.manifest.outputs}

    def runtime_precision(self) -> str:
        """The inference precision the CPU plugin chose (bf16 falls back to f32 on CPUs
        without bfloat16)."""
        value = self.compiled.get_property('INFERENCE_PRECISION_HINT')
        return value.to_string() if hasattr(value, 'to_string') else str(value)

    def _infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {port: np.ascontiguousarray(inputs[n], dtype=np.float32)
                for n, port in self._inputs.items()}
        res = self.request.infer(feed)
        return {n: np.array(res[o], dtype=np.float32, copy=True)
                for n, o in self._outputs.items()}

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d['runtime_precision'] = self.runtime_precision()
        return d
