"""Inference engines behind one small interface, loadable from a file plus its JSON manifest.

    from qail_ros.engines import load_engine
    engine = load_engine('models/cilrs/cilrs_r18_w8a8.onnx', threads=1)   # reads <file>.json
    engine.warmup()
    outputs = engine.infer({'image': image, 'speed': speed})           # name -> np.ndarray
    engine.describe()    # {'backend', 'precision', 'device', 'backend_version', ...}

Back ends (registry, `register_backend` adds more, e.g. an INT4 weight-only LLM engine):
  torch        FP32 / BF16 torch module (safetensors state dict + architecture in the manifest)
  onnxruntime  FP32 or static W8A8 ONNX graphs on the CPU execution provider
  torch-int8   W4A4 / W8A8 from qail_ros.quant on int8 kernels (torch._int_mm), packed weights
  tensorrt     a TensorRT plan built from ONNX on an NVIDIA GPU (imported lazily)
  openvino     OpenVINO IR (one .ovz file) on x86 / ARM CPUs: FP32, BF16, NNCF INT8 (optional:
               pip install openvino nncf)
Models loaded from their own source (no manifest file; registry ENGINES / MANIFEST_SOURCES):
  openvla            an OpenVLA checkpoint directory: fp32 / bf16 / int4 (torch), int4_ort
  conv-image-policy  the demo conv image policy: a weights file, or seeded from a config
    load_engine('models/openvla-tiny', precision='int4_ort', options={'unnorm_key': 'bridge_orig'})
The cache (`EngineCache`) rebuilds an engine whenever the source model hash (from the tensors,
not the file bytes), back-end version, device or precision in its key changes.
`calibration` reads calibration / held-out frames from a recorded data set and reports
accuracy; `select` is `--backend auto` (the fastest engine within an accuracy bound).
Nothing here imports torch, onnxruntime or openvino until an engine of that back end is
loaded. See docs/engines.md.
"""
from __future__ import annotations

from qail_ros.engines.base import (Engine, EngineError, ManifestMismatchError, device_id)
from qail_ros.engines.cache import EngineCache
from qail_ros.engines.manifest import MANIFEST_FORMAT, Manifest, manifest_path, read_manifest
from qail_ros.engines.registry import (BACKENDS, backend_class, load_engine,
                                       register_architecture, register_backend,
                                       register_model)

__all__ = ['Engine', 'EngineError', 'ManifestMismatchError', 'Manifest', 'MANIFEST_FORMAT',
           'manifest_path', 'read_manifest', 'load_engine', 'BACKENDS', 'backend_class',
           'register_backend', 'register_architecture', 'register_model', 'EngineCache',
           'device_id']
