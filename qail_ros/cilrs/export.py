"""Build CILRS engine files (qail_ros.engines) from a checkpoint, through the EngineCache.

    from qail_ros.cilrs.export import build_engines
    paths = build_engines('models/cilrs/cilrs_r34.safetensors', 'models/cilrs/engines')
    # {'fp32_torch': ..., 'bf16_torch': ..., 'fp32_ort': ..., 'w8a8_ort': ..., 'w4a4_int8': ...}

Every engine takes the same normalised inputs ('image' (1, 3, H, W), 'speed' (1, 1)) and gives
the same outputs ('branches' (1, 6, O), 'speed_pred' (1, 1)); see qail_ros/cilrs/config.py.

  fp32_torch  the checkpoint's float model (reference)               torch
  bf16_torch  the same in bfloat16                                    torch
  fp32_ort    the BatchNorm-folded model exported to ONNX (opset 17)  onnxruntime
  w8a8_ort    that graph statically quantized: uint8 activations (asymmetric, per tensor),
              int8 weights (symmetric, per output channel), QDQ format, MinMax calibration on
              `calibration` batches                                   onnxruntime int8 kernels
  w4a4_int8   the LSQ W4A4 student (quant.save_quantized file, packed int4 weights) run on int8
              kernels with 4-bit numerics; without `w4a4_student`, the BN-folded model is
              LSQ-initialised from `calibration` (an untrained student: the latency and the
              numerics are real, the accuracy is that of PTQ)          torch-int8
OpenVINO kinds (optional: `pip install openvino nncf`; qail_ros.engines.openvino_engine):
  fp32_openvino      the BN-folded ONNX graph converted to OpenVINO IR, f32      openvino
  bf16_openvino      the same IR compiled in bfloat16 (native on AVX512-BF16 / AMX)
  w8a8_openvino      NNCF post-training INT8 of that IR, calibrated on ALL the `calibration`
                     batches (recorded frames for a deployed engine), NNCF's defaults
  w8a8_ort_openvino  OpenVINO compiling the w8a8_ort QDQ graph (our quantization, its kernels)

Calibration from recorded data: `dataset_calibration(DATASET, config, frames=100)` gives the
calibration batches (train split) and held-out batches; `export_auto` builds every kind this
machine runs, reports each one's accuracy against FP on the held-out frames and its latency,
and keeps the fastest within an accuracy bound (`qail-ros export CKPT -o DIR --backend auto
--calibration DATASET`).
"""
from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from qail_ros.cilrs.config import CILRSConfig
from qail_ros.engines.cache import EngineCache, content_hash
from qail_ros.engines.manifest import sha256_file

_log = logging.getLogger(__name__)

__all__ = ['ENGINE_KINDS', 'BASE_KINDS', 'OPENVINO_KINDS', 'build_engines', 'export_onnx',
           'synthetic_calibration', 'quantize_w4a4', 'dataset_calibration', 'export_auto',
           'available_kinds', 'kinds_for', 'seeded_checkpoint', 'run_export',
           'add_calibration_arguments']

#: engine kind -> (backend, precision, file suffix)
ENGINE_KINDS: dict[str, tuple[str, str, str]] = {
    'fp32_torch': ('torch', 'fp32', '.safetensors'),
    'bf16_torch': ('torch', 'bf16', '.safetensors'),
    'fp32_ort': ('onnxruntime', 'fp32', '.onnx'),
    'w8a8_ort': ('onnxruntime', 'w8a8', '.onnx'),
    'w4a4_int8': ('torch-int8', 'w4a4', '.safetensors'),
    'fp32_openvino': ('openvino', 'fp32', '.ovz'),
    'bf16_openvino': ('openvino', 'bf16', '.ovz'),
    'w8a8_openvino': ('openvino', 'w8a8', '.ovz'),
    'w8a8_ort_openvino': ('openvino', 'w8a8', '.ovz'),
}
#: what build_engines makes by default (no optional back end needed)
BASE_KINDS = ('fp32_torch', 'bf16_torch', 'fp32_ort', 'w8a8_ort', 'w4a4_int8')
OPENVINO_KINDS = ('fp32_openvino', 'bf16_openvino', 'w8a8_openvino', 'w8a8_ort_openvino')
#: the calibrated kinds: their cache key holds the calibration set's hash
_CALIBRATED = ('w8a8_ort', 'w8a8_openvino', 'w8a8_ort_openvino')

Batch = tuple[np.ndarray, np.ndarray]   # (image (N, 3, H, W), speed (N, 1)), normalised


def synthetic_calibration(config: CILRSConfig, n: int = 8, seed: int = 0) -> list[Batch]:
    """Camera-like calibration batches (smooth random images, normalised; speeds 0..10 m/s).

    Use recorded frames for a deployed engine; these only give the activation ranges a
    plausible scale (tests, benchmarks).
    """
    rng = np.random.default_rng(seed)
    mean = np.asarray(config.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(config.std, np.float32).reshape(1, 3, 1, 1)
    out = []
    for _ in range(n):
        coarse = rng.uniform(0, 1, (1, 3, 8, 8)).astype(np.float32)
        ry = -(-config.height // 8)
        rx = -(-config.width // 8)
        img = np.repeat(np.repeat(coarse, ry, axis=2), rx, axis=3)
        img = img[:, :, :config.height, :config.width]
        img = np.clip(img + rng.normal(0, 0.05, img.shape).astype(np.float32), 0, 1)
        speed = np.asarray([[rng.uniform(0, 10) / config.speed_scale]], np.float32)
        out.append((((img - mean) / std).astype(np.float32), speed))
    return out


def _fields(config: CILRSConfig, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {'architecture': {'name': 'cilrs', 'config': config.to_dict()},
            'inputs': config.input_spec(), 'outputs': config.output_spec(),
            'normalisation': config.normalisation(), 'details': details or {}}


def export_onnx(model, path: str | Path, opset: int = 17) -> Path:
    """Export a CILRS model (batch 1, fixed shapes) with the TorchScript-based exporter."""
    import warnings

    import torch
    path = Path(path)
    with torch.no_grad(), warnings.catch_warnings():
        # the TorchScript exporter is deprecated but needs no onnxscript and exports this
        # static-shape CNN exactly; the dynamo exporter would add a dependency
        warnings.simplefilter('ignore', DeprecationWarning)
        torch.onnx.export(model.eval(), model.example_inputs(), str(path), dynamo=False,
                          input_names=['image', 'speed'],
                          output_names=['branches', 'speed_pred'], opset_version=opset,
                          do_constant_folding=True)
    return path


def quantize_w4a4(fp_model, calibration: Sequence[Batch], config=None):
    """BN-folded copy of `fp_model`, fake-quantized W4A4 (LSQ, per-tensor) from calibration."""
    import torch

    from qail_ros import quant
    student = fp_model.fused()
    batches = [tuple(torch.from_numpy(a) for a in b) for b in calibration]
    return quant.quantize_(student, config or quant.W4A4LSQ(), calibration=batches).eval()


class _Reader:
    """onnxruntime CalibrationDataReader over our batches."""

    def __init__(self, batches: Iterable[Batch]):
        self._it = iter([{'image': b[0], 'speed': b[1]} for b in batches])

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # some versions call it
        pass


def _build_w8a8(onnx_fp32: Path, out: Path, calibration: Sequence[Batch],
                op_types: Sequence[str] | None = None) -> dict[str, Any]:
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    extra = {'op_types_to_quantize': list(op_types)} if op_types else {}
    quantize_static(str(onnx_fp32), str(out), _Reader(calibration),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, **extra)
    return {'activations': 'uint8 asymmetric per-tensor (static, MinMax)',
            'weights': 'int8 symmetric per-output-channel', 'format': 'QDQ',
            'calibration_batches': len(calibration),
            'quantized_ops': list(op_types) if op_types else 'every op onnxruntime quantizes'}


def _feeds(batches: Sequence[Batch]) -> list[dict[str, np.ndarray]]:
    """Calibration batches as engine feeds, one frame each (NNCF and the engines run batch 1)."""
    out = []
    for image, speed in batches:
        for i in range(len(image)):
            out.append({'image': np.ascontiguousarray(image[i:i + 1], np.float32),
                        'speed': np.ascontiguousarray(speed[i:i + 1], np.float32)})
    return out


def _fp_reference(source, holdout):
    """(the held-out frames as engine feeds, the FP checkpoint's outputs on them)."""
    from qail_ros.cilrs.model import load_checkpoint
    from qail_ros.engines.calibration import reference_outputs
    model = load_checkpoint(source)
    feeds = _feeds(holdout)

    def fp(feed):
        import torch
        with torch.no_grad():
            b, s = model(torch.from_numpy(feed['image']), torch.from_numpy(feed['speed']))
        return {'branches': b.numpy(), 'speed_pred': s.numpy()}
    return feeds, reference_outputs(fp, feeds)


def _build_openvino(kind: str, onnx_path: Path, out: Path, calibration: Sequence[Batch],
                    options: dict[str, Any]) -> dict[str, Any]:
    from qail_ros.engines import openvino_engine as ov
    model = ov.convert_onnx(onnx_path)
    details: dict[str, Any] = {'ir': 'OpenVINO IR (model.xml + model.bin in one zip)'}
    if kind == 'fp32_openvino':
        details['source_graph'] = 'the BatchNorm-folded FP32 ONNX graph'
    elif kind == 'bf16_openvino':
        details['source_graph'] = 'the BatchNorm-folded FP32 ONNX graph'
        details['compute'] = ('bfloat16 (INFERENCE_PRECISION_HINT bf16) where the CPU has it, '
                              'else float32')
    elif kind == 'w8a8_ort_openvino':
        details['source_graph'] = 'the w8a8_ort QDQ graph (onnxruntime quantize_static scales)'
    else:
        feeds = _feeds(calibration)
        nncf_keys = ('preset', 'fast_bias_correction', 'ignored_types')
        nncf_opts = {k: v for k, v in options.items() if k in nncf_keys}
        model = ov.nncf_int8(model, feeds, **nncf_opts)
        import nncf
        details.update({'quantizer': f'NNCF {nncf.__version__} post-training quantization',
                        'calibration_frames': len(feeds),
                        'nncf_options': nncf_opts or 'NNCF defaults (preset performance, '
                                                     'fast bias correction)',
                        'weights': 'int8 symmetric per-output-channel',
                        'activations': 'int8 per-tensor (static)'})
    if options.get('compile') and kind in ('w8a8_openvino', 'w8a8_ort_openvino'):
        details['compile'] = dict(options['compile'])
    details.update(ov.ir_details(model))
    ov.save_ir(model, out)
    return details


def build_engines(source: str | Path, out_dir: str | Path,
                  kinds: Sequence[str] = BASE_KINDS, *,
                  calibration: Sequence[Batch] | None = None,
                  w4a4_student: str | Path | None = None, name: str | None = None,
                  cache: EngineCache | None = None, details: dict[str, Any] | None = None,
                  calibration_note: str | None = None,
                  w8a8_op_types: Sequence[str] | None = None,
                  openvino_options: dict[str, Any] | None = None,
                  names: dict[str, str] | None = None,
                  rebuilt: list[str] | None = None) -> dict[str, Path]:
    """Build (or reuse from the cache) every engine kind for a CILRS checkpoint.

    source: save_checkpoint's safetensors (the FP model). w4a4_student: a quant.save_quantized
    file of a W4A4 student of that model (e.g. QAIL-trained); None = LSQ-initialise one.
    details: extra manifest facts (e.g. what the model was trained on); every manifest also
    gets `source_model_sha256`, the hash of `source` (the w4a4 engine's source_hash is the
    student file's). calibration_note: where the calibration batches come from (manifest).
    w8a8_op_types: ONNX op types w8a8_ort quantizes (None: all onnxruntime supports; ('Conv',)
    keeps the small MLP heads in float, see models/cilrs-highway/README.md).
    openvino_options: w8a8_openvino's NNCF options ('preset', 'fast_bias_correction',
    'ignored_types') and the OpenVINO INT8 engines' compile settings ('compile': {...}); they
    are part of the cache key. names: file name (without suffix) per kind (default
    `{name}_{kind}`). rebuilt: a list that gets the kinds built now (not reused).
    The cache key of every engine is taken from the checkpoint's tensors (content_hash), not
    its file bytes; calibrated kinds add the calibration set's hash.
    Returns {kind: engine path}; each engine has its manifest next to it.
    """
    import json
    import tempfile

    from qail_ros.cilrs.model import load_checkpoint
    unknown = [k for k in kinds if k not in ENGINE_KINDS]
    if unknown:
        raise ValueError(f'unknown engine kinds {unknown}; known: {list(ENGINE_KINDS)}')
    source = Path(source)
    model = load_checkpoint(source)
    config = model.config
    fused_config = CILRSConfig.from_dict({**config.to_dict(), 'fused_bn': True})
    calibration = calibration or synthetic_calibration(config)
    cache = cache or EngineCache(out_dir)
    name = name or source.stem
    src_hash = content_hash(source)
    ov_options = dict(openvino_options or {})
    extra = {**(details or {}), 'source_model_sha256': sha256_file(source),
             'source_content_hash': src_hash}
    if calibration_note:
        extra['calibration'] = calibration_note
    paths: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix='cilrs-export-') as tmp:
        onnx_fp32 = Path(tmp) / 'fp32.onnx'
        onnx_w8a8 = Path(tmp) / 'w8a8.onnx'

        def fused_onnx() -> Path:
            if not onnx_fp32.exists():
                export_onnx(model.fused(), onnx_fp32)
            return onnx_fp32

        def w8a8_onnx() -> Path:
            if 'w8a8_ort' in paths:         # built or reused in this call, same calibration
                return paths['w8a8_ort']
            if not onnx_w8a8.exists():
                _build_w8a8(fused_onnx(), onnx_w8a8, calibration, w8a8_op_types)
            return onnx_w8a8

        for kind in kinds:
            backend, precision, suffix = ENGINE_KINDS[kind]
            if kind == 'fp32_torch':
                def build(p, _c=config):
                    shutil.copyfile(source, p)
                    return _fields(_c, {'weights': 'the source checkpoint (with BatchNorm)'})
            elif kind == 'bf16_torch':
                def build(p, _c=config):
                    from safetensors.torch import save_file
                    import torch
                    save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v
                               for k, v in model.state_dict().items()}, str(p))
                    return _fields(_c, {'weights': 'bfloat16 copy of the source checkpoint'})
            elif kind == 'fp32_ort':
                def build(p):
                    shutil.copyfile(fused_onnx(), p)
                    return _fields(fused_config, {'exporter': 'torch.onnx (TorchScript), '
                                                  'opset 17, BatchNorm folded'})
            elif kind == 'w8a8_ort':
                def build(p):
                    return _fields(fused_config, _build_w8a8(fused_onnx(), p, calibration,
                                                             w8a8_op_types))
            elif backend == 'openvino':
                def build(p, _kind=kind):
                    graph = w8a8_onnx() if _kind == 'w8a8_ort_openvino' else fused_onnx()
                    return _fields(fused_config, _build_openvino(_kind, graph, p, calibration,
                                                                 ov_options))
            else:
                def build(p):
                    from qail_ros import quant
                    if w4a4_student is not None:
                        shutil.copyfile(w4a4_student, p)
                        origin = f'student {Path(w4a4_student).name}'
                    else:
                        quant.save_quantized(quantize_w4a4(model, calibration), p)
                        origin = f'LSQ W4A4 initialised on {len(calibration)} calibration ' \
                                 'batches (untrained)'
                    return _fields(fused_config, {
                        'weights': 'int4 per-tensor symmetric, packed 2 per byte',
                        'activations': 'int4 per-tensor (unsigned after ReLU), static',
                        'kernels': 'torch._int_mm int8 (4-bit codes), im2col convolutions',
                        'origin': origin})
            w4_hash = content_hash(w4a4_student) if (kind == 'w4a4_int8' and w4a4_student) \
                else None
            key_source = w4_hash or src_hash
            if (kind in _CALIBRATED or kind == 'w4a4_int8') and w4_hash is None:
                key_source = f'{src_hash}+calib{_calib_hash(calibration)}'
                if kind in ('w8a8_ort', 'w8a8_ort_openvino') and w8a8_op_types:
                    key_source += '+ops' + ','.join(w8a8_op_types)
            if kind in ('w8a8_openvino', 'w8a8_ort_openvino') and ov_options:
                key_source += '+ov' + json.dumps(ov_options, sort_keys=True, default=str)

            calibrated = kind in _CALIBRATED or (kind == 'w4a4_int8' and w4a4_student is None)

            def build_with_extra(p, _build=build, _calibrated=calibrated):
                fields = _build(p)
                fields['details'] = {**{k: v for k, v in extra.items()
                                        if k != 'calibration' or _calibrated},
                                     **fields['details']}
                return fields

            file_name = (names or {}).get(kind) or f'{name}_{kind}'
            paths[kind], built = cache.get_or_build(source, file_name, backend=backend,
                                                    precision=precision,
                                                    build_fn=build_with_extra, suffix=suffix,
                                                    source_hash=key_source)
            if built and rebuilt is not None:
                rebuilt.append(kind)
    return paths


def _calib_hash(batches: Sequence[Batch]) -> str:
    import hashlib
    h = hashlib.sha256()
    for img, speed in batches:
        h.update(np.ascontiguousarray(img).tobytes())
        h.update(np.ascontiguousarray(speed).tobytes())
    return h.hexdigest()[:16]


def dataset_calibration(dataset: str | Path, config: CILRSConfig, *, frames: int = 100,
                        holdout: int = 32) -> tuple[list[Batch], list[Batch], dict[str, Any]]:
    """(calibration batches, held-out batches, source facts) from a recorded data set.

    The image is the data set's first camera (`observation.images.*`), preprocessed as the
    cilrs_policy node does (`preprocess_frame`: resized to the engine's input, normalised); the
    speed in m/s is `observation.command[0]` (the speed topic mapped under `command:`), else
    `observation.state[0]`, else 0. Calibration frames come from the train split, held-out
    frames from the val split (qail_ros.engines.calibration.recorded_frames).
    """
    from qail_ros.cilrs.config import preprocess_frame
    from qail_ros.dataset.reader import load_manifest
    from qail_ros.engines.calibration import recorded_frames
    from qail_ros.errors import ParameterError
    features = list(load_manifest(dataset)['features'])
    cams = [k for k in features if k.startswith('observation.images.')]
    if not cams:
        raise ParameterError(f'data set {dataset} has no camera images (observation.images.*): '
                             'CILRS calibrates on recorded camera frames')
    speed_key = next((k for k in ('observation.command', 'observation.state')
                      if k in features), None)
    keys = [cams[0]] + ([speed_key] if speed_key else [])
    rec = recorded_frames(dataset, frames=frames, holdout=holdout, keys=keys)

    def batch(sample) -> Batch:
        speed = float(np.asarray(sample[speed_key]).reshape(-1)[0]) if speed_key else 0.0
        x = preprocess_frame(np.asarray(sample[cams[0]]), speed, config)
        return x['image'], x['speed']
    source = {**rec.source, 'image_key': cams[0], 'speed_key': speed_key or 'none (0 m/s)'}
    return [batch(s) for s in rec.calibration], [batch(s) for s in rec.holdout], source


def available_kinds(include_w4a4: bool = False) -> list[str]:
    """The engine kinds this machine can build and run: the torch / onnxruntime ones, bf16
    only where the CPU computes bfloat16 natively, OpenVINO's when openvino + nncf import."""
    import importlib.util

    from qail_ros.engines.openvino_engine import bf16_native, nncf_available
    kinds = ['fp32_torch', 'fp32_ort']
    if importlib.util.find_spec('onnxruntime') is not None:
        kinds.append('w8a8_ort')
    else:
        kinds.remove('fp32_ort')
    if bf16_native():
        kinds.append('bf16_torch')
    if include_w4a4:
        kinds.append('w4a4_int8')
    if nncf_available():
        kinds += ['fp32_openvino', 'w8a8_openvino']
        if bf16_native():
            kinds.append('bf16_openvino')
        if 'w8a8_ort' in kinds:
            kinds.append('w8a8_ort_openvino')
    return kinds


def kinds_for(backend: str, precision: str | None = None) -> list[str]:
    """Engine kinds of one back end (and precision): 'openvino' + 'w8a8' -> ['w8a8_openvino'];
    'auto' -> available_kinds()."""
    if backend == 'auto':
        return available_kinds()
    alias = {'int8': 'w8a8'}
    precision = alias.get(precision or '', precision)
    kinds = [k for k, (b, p, _) in ENGINE_KINDS.items() if b == backend and
             (precision is None or p == precision) and k != 'w8a8_ort_openvino']
    if not kinds:
        have = sorted({f'{b}/{p}' for b, p, _ in ENGINE_KINDS.values()})
        raise ValueError(f'no CILRS engine for back end {backend!r} precision {precision!r}; '
                         f'known: {have}')
    return kinds


def export_auto(source: str | Path, out_dir: str | Path, *,
                calibration: Sequence[Batch], holdout: Sequence[Batch],
                kinds: Sequence[str] | None = None, max_abs_diff: float | None = None,
                threads: int = 1, runs: int = 20, name: str | None = None,
                calibration_note: str | None = None,
                details: dict[str, Any] | None = None, w4a4_student: str | Path | None = None,
                openvino_options: dict[str, Any] | None = None) -> tuple[Path, dict[str, Any]]:
    """`--backend auto`: build `kinds` (default: every kind this machine runs), measure each
    on the held-out frames (accuracy vs the FP32 torch model, latency at `threads`), keep the
    fastest within `max_abs_diff`; the measurements and the choice go into the manifests.
    Returns (the chosen engine's path, the selection)."""
    from qail_ros.engines.select import DEFAULT_MAX_ABS_DIFF, record_choice, select_fastest
    kinds = list(kinds or available_kinds(include_w4a4=w4a4_student is not None))
    paths = build_engines(source, out_dir, kinds, calibration=calibration, name=name,
                          calibration_note=calibration_note, details=details,
                          w4a4_student=w4a4_student, openvino_options=openvino_options)
    feeds, reference = _fp_reference(source, holdout)
    bound = DEFAULT_MAX_ABS_DIFF if max_abs_diff is None else float(max_abs_diff)
    result = select_fastest(paths, feeds, reference, max_abs_diff=bound, threads=threads,
                            runs=runs)
    chosen = record_choice(paths, result, {'reference': 'the FP32 torch model (checkpoint)'})
    return chosen, result


def seeded_checkpoint(out: Path, resnet: int = 18, height: int = 256, width: int = 900) -> Path:
    """A seeded, untrained CILRS saved as OUT/cilrs_rRESNET.safetensors: engines for trying the
    node and measuring latency, not for driving (`qail-ros export cilrs`)."""
    from qail_ros.cilrs.model import build_model, save_checkpoint
    model = build_model(CILRSConfig(resnet=resnet, height=height, width=width))
    return save_checkpoint(model, Path(out) / f'cilrs_r{resnet}.safetensors')


def add_calibration_arguments(p) -> None:
    """--backend / --precision / --calibration / --frames / --holdout / --max-abs-diff."""
    p.add_argument('--backend', default=None,
                   choices=('auto', 'torch', 'onnxruntime', 'openvino', 'torch-int8',
                            'tensorrt'),
                   help='auto: build every engine this machine runs, measure, keep the fastest '
                   'within --max-abs-diff of FP (default: CILRS the standard kinds, a state '
                   'policy its own back end, image policies openvino)')
    p.add_argument('--precision', default=None, help='with a back end: fp32, bf16, w8a8 (int8)')
    p.add_argument('--calibration', default=None, metavar='DATASET',
                   help='recorded data set (qail-ros dataset build) whose frames calibrate '
                   'the INT8 engines and judge every engine against FP (held-out frames)')
    p.add_argument('--frames', type=int, default=100,
                   help='calibration frames taken from DATASET (default %(default)s)')
    p.add_argument('--holdout', type=int, default=32,
                   help='held-out frames of DATASET for the accuracy report (default '
                   '%(default)s)')
    p.add_argument('--max-abs-diff', type=float, default=None,
                   help='auto: accuracy bound, max |engine - FP| on held-out frames (default '
                   '0.05)')
    p.add_argument('--threads', type=int, default=1, help='threads the engines are timed at')
    p.add_argument('--runs', type=int, default=20, help='auto: timed runs per candidate')


def record_accuracy(path: Path, report: dict[str, Any]) -> None:
    """Write an accuracy report into an engine's manifest (`details.accuracy`)."""
    from qail_ros.engines.manifest import read_manifest, write_manifest
    engine_path, manifest = read_manifest(path)
    manifest.details['accuracy'] = report
    write_manifest(manifest, engine_path.parent)


def run_export(source: Path, out: Path, args, *, kinds: Sequence[str] | None = None,
               w4a4_student: str | Path | None = None, name: str | None = None,
               log: Callable[[str], None] | None = None) -> int:
    """Build (auto: and choose) engines of the CILRS checkpoint `source` as `args` say;
    `log` (default: this module's logger) gets one line per engine with its accuracy on
    held-out frames (`qail-ros export` prints them)."""
    import json

    from qail_ros.cilrs.model import load_checkpoint
    from qail_ros.engines.calibration import accuracy
    from qail_ros.engines.registry import load_engine
    log = log or _log.info
    config = load_checkpoint(source).config
    holdout: list[Batch] = []
    note = None
    if args.calibration:
        calib, holdout, facts = dataset_calibration(args.calibration, config,
                                                    frames=args.frames, holdout=args.holdout)
        note = (f"{facts['calibration_frames']} recorded frames of {facts['dataset']} "
                f"(manifest sha256 {facts['dataset_manifest_sha256'][:12]}...; held out: "
                f"{facts['holdout_frames']} from the {facts['holdout_from']})")
    else:
        calib = synthetic_calibration(config, min(args.frames, 8))
        holdout = synthetic_calibration(config, min(args.holdout, 8), seed=123)
        note = f'{len(calib)} synthetic camera-like frames (no --calibration DATASET)'
    if args.backend == 'auto':
        chosen, result = export_auto(source, out, calibration=calib, holdout=holdout,
                                     max_abs_diff=args.max_abs_diff, threads=args.threads,
                                     runs=args.runs, name=name, calibration_note=note,
                                     w4a4_student=w4a4_student)
        for kind, row in result['candidates'].items():
            mark = '*' if kind == result['chosen'] else ' '
            log(f"{mark} {kind:18s} {row['ms']:9.2f} ms  max |diff| {row['max_abs_diff']:.2e} "
                f"mean {row['mean_abs_diff']:.2e}{'' if row['eligible'] else '  (over bound)'}")
        log(f"chosen: {result['chosen']} -> {chosen}")
        if getattr(args, 'json', False):
            log(json.dumps({'engine': str(chosen), **result}))
        return 0
    if args.backend is not None:
        kinds = kinds_for(args.backend, args.precision)
    paths = build_engines(source, out, kinds or BASE_KINDS, calibration=calib, name=name,
                          calibration_note=note, w4a4_student=w4a4_student)
    feeds, reference = _fp_reference(source, holdout)
    report = {}
    for kind, path in paths.items():
        acc = accuracy(load_engine(path, threads=args.threads), feeds, reference)
        report[kind] = {'engine': str(path), **acc}
        record_accuracy(path, {**acc, 'reference': 'the FP32 torch model (checkpoint)',
                               'frames_from': note if not args.calibration else
                               f'held-out frames of {args.calibration}'})
        log(f'{kind:18s} {path} ({path.stat().st_size / 1e6:.1f} MB) max |diff| vs FP '
            f"{acc['max_abs_diff']:.2e} mean {acc['mean_abs_diff']:.2e} on {acc['frames']} "
            'held-out frames')
    if getattr(args, 'json', False):
        log(json.dumps(report))
    return 0
