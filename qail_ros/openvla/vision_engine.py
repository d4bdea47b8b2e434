"""OpenVLA's vision towers + projector as an engine file: onnxruntime here, TensorRT on a GPU.

    qail-ros export models/openvla-tiny -o engines/vla --backend onnxruntime|tensorrt|openvino \\
        [--precision fp32|fp16|bf16|w8a8]
    OpenVLAPolicy.from_pretrained(path, vision_engine='engines/vla/openvla_vision_fp16.plan')

The paper runs the ViT in TensorRT FP16 on the Orin and the INT4 Llama in its LLM runtime;
this is the first half. The towers and projector (pixel_values (1, 3 x towers, S, S) ->
projected patch tokens (1, patches, llm hidden)) are exported once to ONNX (opset 17, fixed
batch-1 shapes, the TorchScript exporter, as the CILRS export) and become an engine of the
engine registry with its manifest (architecture 'openvla-vision', the model's source hash):
  onnxruntime  the ONNX graph itself, fp32 (CPU; equal to the torch towers to ~1e-5)
  tensorrt     a serialized plan built from that graph (fp16 or fp32), tied to the GPU and
               the TensorRT version like every plan (qail_ros.engines.tensorrt_engine;
               imported only when used, needs the tensorrt package and an NVIDIA GPU)
  openvino     that graph as OpenVINO IR (qail_ros.engines.openvino_engine; x86 and ARM
               CPUs): fp32, bf16 (bfloat16 compute where the CPU has it) or w8a8 (NNCF INT8,
               calibrated on camera frames: `calibration_frames`, recorded ones for a
               deployed engine; default 16 seeded random frames)
The policy then feeds the engine's patch tokens to the backbone instead of running the torch
towers (`OpenVLAModel.vision_engine`).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from qail_ros.openvla.config import OpenVLAError

__all__ = ['ARCHITECTURE', 'build_vision_engine', 'load_vision_engine', 'vision_contract']

ARCHITECTURE = 'openvla-vision'
BACKENDS = {'onnxruntime': ('fp32',), 'tensorrt': ('fp16', 'fp32'),
            'openvino': ('fp32', 'bf16', 'w8a8')}


def vision_contract(config) -> dict[str, Any]:
    """Input / output specs and the config facts an engine must match for this checkpoint."""
    spec = config.vit_specs[0]
    towers = len(config.vit_specs)
    hidden = int(config.llama_config().hidden_size)
    return {'inputs': {'pixel_values': {'shape': [1, 3 * towers, spec.image_size,
                                                  spec.image_size], 'dtype': 'float32'}},
            'outputs': {'patches': {'shape': [1, spec.num_patches, hidden],
                                    'dtype': 'float32'}},
            'config': {'image_size': spec.image_size, 'towers': towers,
                       'patches': spec.num_patches, 'llm_hidden': hidden,
                       'vision_backbone_id': getattr(config, 'vision_backbone_id', None)}}


def _source_hash(path: Path) -> str:
    """sha256 over the names and sha256s of the checkpoint's shards and config."""
    from qail_ros.engines.manifest import sha256_file
    files = sorted(path.glob('*.safetensors')) + [path / 'config.json']
    text = '\n'.join(f'{f.name} {sha256_file(f)}' for f in files if f.is_file())
    return hashlib.sha256(text.encode()).hexdigest()


def _export_onnx(model, contract: dict, out: Path) -> Path:
    import warnings

    import torch
    from torch import nn

    class Towers(nn.Module):
        def __init__(self, vla):
            super().__init__()
            self.vision_backbone, self.projector = vla.vision_backbone, vla.projector

        def forward(self, pixel_values):
            return self.projector(self.vision_backbone(pixel_values))

    shape = contract['inputs']['pixel_values']['shape']
    example = torch.zeros(shape, dtype=torch.float32)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        torch.onnx.export(Towers(model).eval().float(), (example,), str(out), dynamo=False,
                          input_names=['pixel_values'], output_names=['patches'],
                          opset_version=17, do_constant_folding=True)
    return out


def build_vision_engine(model_path: str | Path, out_dir: str | Path, *,
                        backend: str = 'onnxruntime', precision: str | None = None,
                        calibration_frames=None, holdout_frames=None) -> Path:
    """Export the towers + projector of the checkpoint at `model_path` and build an engine
    (file + manifest) in `out_dir`; returns the engine file's path. `calibration_frames`:
    uint8 RGB frames for the openvino w8a8 engine's NNCF calibration; `holdout_frames`: frames
    for its accuracy report against the float graph (manifest `details.accuracy`)."""
    from qail_ros.engines.base import device_id
    from qail_ros.engines.manifest import Manifest, cache_key, sha256_file, write_manifest
    from qail_ros.engines.registry import backend_class
    from qail_ros.openvla.checkpoint import load_model
    from qail_ros.openvla.config import read_config
    if backend not in BACKENDS:
        raise OpenVLAError(f'vision engine back end {backend!r}: choose one of '
                           f'{sorted(BACKENDS)}')
    if backend == 'tensorrt':
        from qail_ros.engines.tensorrt_engine import tensorrt_available
        if not tensorrt_available():
            raise OpenVLAError('backend tensorrt needs the tensorrt Python package and an NVIDIA '
                               'GPU (JetPack on Jetson): build it there, or use backend '
                               'onnxruntime here')
    precision = precision or BACKENDS[backend][0]
    if precision not in BACKENDS[backend]:
        raise OpenVLAError(f'back end {backend} builds {list(BACKENDS[backend])}, not '
                           f'{precision!r}')
    model_path, out_dir = Path(model_path), Path(out_dir)
    config = read_config(model_path)
    contract = vision_contract(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / 'openvla_vision_fp32.onnx'
    _export_onnx(load_model(model_path, config=config), contract, onnx_path)
    engine_path = onnx_path
    device = 'cpu'
    if backend == 'openvino':
        return _build_openvino(model_path, config, contract, onnx_path, out_dir, precision,
                               calibration_frames, holdout_frames)
    if backend == 'tensorrt':
        from qail_ros.engines.tensorrt_engine import build_plan
        engine_path = build_plan(onnx_path, out_dir / f'openvla_vision_{precision}.plan',
                                 precision)
        device = 'cuda'
    cls = backend_class(backend)
    source = _source_hash(model_path)
    version, dev = cls.backend_version(), device_id(device)
    manifest = Manifest(
        engine_file=engine_path.name, engine_sha256=sha256_file(engine_path),
        architecture={'name': ARCHITECTURE, 'config': contract['config']},
        precision=precision, backend=backend, backend_version=version, device=dev,
        inputs=contract['inputs'], outputs=contract['outputs'], source_hash=source,
        normalisation={'note': 'pixel_values as OpenVLAPolicy.pixel_values makes them (each '
                               "tower's resize and mean / std, channels stacked)"},
        cache_key=cache_key(source, backend, version, dev, precision),
        details={'source': str(model_path), 'onnx': onnx_path.name})
    write_manifest(manifest, out_dir)
    return engine_path


def _build_openvino(model_path: Path, config, contract: dict, onnx_path: Path, out_dir: Path,
                    precision: str, frames, holdout=None) -> Path:
    import numpy as np
    import torch

    from qail_ros.engines.openvino_export import build_openvino_engines
    from qail_ros.openvla.config import tower_inputs

    def pixels(f):
        x = torch.from_numpy(np.ascontiguousarray(f)).permute(2, 0, 1)[None].float() / 255
        return {'pixel_values': tower_inputs(x, config.vit_specs).float().numpy()}
    feeds = []
    if precision == 'w8a8':
        if frames is None:
            rng = np.random.default_rng(0)
            frames = [rng.integers(0, 256, (224, 224, 3), np.uint8) for _ in range(16)]
        feeds = [pixels(f) for f in frames]
    fields = {'architecture': {'name': ARCHITECTURE, 'config': contract['config']},
              'inputs': contract['inputs'], 'outputs': contract['outputs'],
              'normalisation': {'note': 'pixel_values as OpenVLAPolicy.pixel_values makes them '
                                        "(each tower's resize and mean / std, channels "
                                        'stacked)'},
              'details': {'source': str(model_path), 'onnx': onnx_path.name}}
    paths = build_openvino_engines(onnx_path, out_dir, 'openvla_vision', fields=fields,
                                   source_hash=_source_hash(model_path),
                                   precisions=(precision,), calibration=feeds,
                                   holdout=[pixels(f) for f in (holdout or [])])
    return paths[precision]


def load_vision_engine(path: str | Path, config, *, threads: int = 1):
    """Load a vision engine and check it answers this checkpoint's contract (shapes, towers,
    hidden size); a clear error otherwise."""
    from qail_ros.engines.base import EngineError
    from qail_ros.engines.registry import load_engine
    contract = vision_contract(config)
    device = 'cuda' if str(path).endswith('.plan') else 'cpu'
    try:
        return load_engine(path, threads=threads, device=device,
                           expect={'architecture': ARCHITECTURE, 'inputs': contract['inputs'],
                                   'outputs': contract['outputs'],
                                   'config': contract['config']})
    except EngineError as exc:
        raise OpenVLAError(f'vision engine {path}: {exc}') from None
