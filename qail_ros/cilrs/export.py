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
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from qail_ros.cilrs.config import CILRSConfig
from qail_ros.engines.cache import EngineCache
from qail_ros.engines.manifest import sha256_file

__all__ = ['ENGINE_KINDS', 'build_engines', 'export_onnx', 'synthetic_calibration',
           'quantize_w4a4']

#: engine kind -> (backend, precision, file suffix)
ENGINE_KINDS: dict[str, tuple[str, str, str]] = {
    'fp32_torch': ('torch', 'fp32', '.safetensors'),
    'bf16_torch': ('torch', 'bf16', '.safetensors'),
    'fp32_ort': ('onnxruntime', 'fp32', '.onnx'),
    'w8a8_ort': ('onnxruntime', 'w8a8', '.onnx'),
    'w4a4_int8': ('torch-int8', 'w4a4', '.safetensors'),
}

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


def build_engines(source: str | Path, out_dir: str | Path,
                  kinds: Sequence[str] = tuple(ENGINE_KINDS), *,
                  calibration: Sequence[Batch] | None = None,
                  w4a4_student: str | Path | None = None, name: str | None = None,
                  cache: EngineCache | None = None, details: dict[str, Any] | None = None,
                  calibration_note: str | None = None,
                  w8a8_op_types: Sequence[str] | None = None) -> dict[str, Path]:
    """Build (or reuse from the cache) every engine kind for a CILRS checkpoint.

    source: save_checkpoint's safetensors (the FP model). w4a4_student: a quant.save_quantized
    file of a W4A4 student of that model (e.g. QAIL-trained); None = LSQ-initialise one.
    details: extra manifest facts (e.g. what the model was trained on); every manifest also
    gets `source_model_sha256`, the hash of `source` (the w4a4 engine's source_hash is the
    student file's). calibration_note: where the calibration batches come from (manifest).
    w8a8_op_types: ONNX op types w8a8_ort quantizes (None: all onnxruntime supports; ('Conv',)
    keeps the small MLP heads in float, see models/cilrs-highway/README.md).
    Returns {kind: engine path}; each engine has its manifest next to it.
    """
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
    src_hash = sha256_file(source)
    extra = {**(details or {}), 'source_model_sha256': src_hash}
    if calibration_note:
        extra['calibration'] = calibration_note
    paths: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix='cilrs-export-') as tmp:
        onnx_fp32 = Path(tmp) / 'fp32.onnx'

        def fused_onnx() -> Path:
            if not onnx_fp32.exists():
                export_onnx(model.fused(), onnx_fp32)
            return onnx_fp32

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
            w4_hash = sha256_file(w4a4_student) if (kind == 'w4a4_int8' and w4a4_student) \
                else None
            key_source = w4_hash or src_hash
            if kind in ('w8a8_ort', 'w4a4_int8') and w4_hash is None:
                key_source = f'{src_hash}+calib{_calib_hash(calibration)}'
                if kind == 'w8a8_ort' and w8a8_op_types:
                    key_source += '+ops' + ','.join(w8a8_op_types)

            calibrated = kind == 'w8a8_ort' or (kind == 'w4a4_int8' and w4a4_student is None)

            def build_with_extra(p, _build=build, _calibrated=calibrated):
                fields = _build(p)
                fields['details'] = {**{k: v for k, v in extra.items()
                                        if k != 'calibration' or _calibrated},
                                     **fields['details']}
                return fields

            paths[kind], _ = cache.get_or_build(source, f'{name}_{kind}', backend=backend,
                                                precision=precision, build_fn=build_with_extra,
                                                suffix=suffix, source_hash=key_source)
    return paths


def _calib_hash(batches: Sequence[Batch]) -> str:
    import hashlib
    h = hashlib.sha256()
    for img, speed in batches:
        h.update(np.ascontiguousarray(img).tobytes())
        h.update(np.ascontiguousarray(speed).tobytes())
    return h.hexdigest()[:16]


def main(argv: list[str] | None = None) -> int:
    """`python -m qail_ros.cilrs.export`: build a CILRS engine set into a directory.

    Without --checkpoint a seeded (untrained) model is used: engines for trying the node and
    measuring latency, not for driving.
    """
    import argparse

    from qail_ros.cilrs.model import build_model, save_checkpoint
    p = argparse.ArgumentParser(prog='python -m qail_ros.cilrs.export', description=main.__doc__)
    p.add_argument('--checkpoint', help='save_checkpoint file (default: seeded ResNet model)')
    p.add_argument('--w4a4-student', help='quant.save_quantized file of the W4A4 student')
    p.add_argument('--resnet', type=int, default=18, choices=(18, 34))
    p.add_argument('--height', type=int, default=256)
    p.add_argument('--width', type=int, default=900)
    p.add_argument('--kinds', default=','.join(ENGINE_KINDS))
    p.add_argument('--out', default='models/cilrs')
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.checkpoint:
        source = Path(args.checkpoint)
    else:
        model = build_model(CILRSConfig(resnet=args.resnet, height=args.height,
                                        width=args.width))
        source = save_checkpoint(model, out / f'cilrs_r{args.resnet}.safetensors')
    paths = build_engines(source, out, [k for k in args.kinds.split(',') if k],
                          w4a4_student=args.w4a4_student)
    for kind, path in paths.items():
        print(f'{kind:12s} {path} ({path.stat().st_size / 1e6:.1f} MB)')
    return 0


if __name__ == '__main__':
    import sys
    sys.exit(main())
