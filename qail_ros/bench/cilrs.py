"""CILRS latency per engine at batch 1: FP32 torch, BF16 torch, FP32 onnxruntime, W8A8
onnxruntime (int8 kernels), W4A4 on int8 kernels; median and p90 in the same run.

Engines are built (or reused from the cache, rebuilt when the model/back end/device changes)
from a seeded ResNet-CILRS checkpoint; weights are random, so only latency, size and numerical
agreement are meaningful. Runs are interleaved round-robin over the engines so that load on a
shared machine hits every engine alike. Also reports the model's FLOPs at the chosen camera
resolution next to the paper's 14.5 GFLOPs, and each engine's size on disk.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from qail_ros.bench.report import emit_json, environment, table

HELP = 'CILRS latency per engine (FP32 torch/ORT, BF16, W8A8, W4A4-on-int8), batch 1'
PAPER_GFLOPS = 14.5
LABELS = {'fp32_torch': 'FP32 torch', 'bf16_torch': 'BF16 torch',
          'fp32_ort': 'FP32 onnxruntime', 'w8a8_ort': 'W8A8 onnxruntime (int8)',
          'w4a4_int8': 'W4A4 on int8 kernels (torch._int_mm)'}
JSON_NAMES = {'fp32_torch': 'fp32_torch', 'bf16_torch': 'bf16_torch', 'fp32_ort': 'fp32_ort',
              'w8a8_ort': 'w8a8', 'w4a4_int8': 'w4a4'}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--resnet', type=int, default=34, choices=(18, 34))
    parser.add_argument('--height', type=int, default=256)
    parser.add_argument('--width', type=int, default=900)
    parser.add_argument('--runs', type=int, default=50, help='timed runs per engine (>= 1)')
    parser.add_argument('--warmup', type=int, default=3, help='untimed runs per engine')
    parser.add_argument('--threads', type=int, default=1, help='CPU threads of every engine')
    parser.add_argument('--engines', default=','.join(LABELS),
                        help='comma-separated subset of ' + ','.join(LABELS))
    parser.add_argument('--calibration', type=int, default=8,
                        help='synthetic calibration batches for W8A8 / W4A4')
    parser.add_argument('--cache-dir', default=os.environ.get(
        'QAIL_ROS_ENGINE_CACHE', os.path.expanduser('~/.cache/qail_ros/engines/cilrs_bench')),
        help='where engines are built / reused (the engine cache)')


def main(args) -> int:
    import torch

    from qail_ros.cilrs.config import CILRSConfig
    from qail_ros.cilrs.export import build_engines, synthetic_calibration
    from qail_ros.cilrs.model import build_model, count_macs, save_checkpoint
    from qail_ros.engines import load_engine
    kinds = [k.strip() for k in args.engines.split(',') if k.strip()]
    unknown = [k for k in kinds if k not in LABELS]
    if unknown or args.runs < 1 or args.threads < 1:
        print(f'bad arguments: unknown engines {unknown}, runs {args.runs}, threads '
              f'{args.threads}; engines are {list(LABELS)}')
        return 2
    torch.set_num_threads(args.threads)
    config = CILRSConfig(resnet=args.resnet, height=args.height, width=args.width)
    macs = count_macs(config)
    cache = Path(args.cache_dir)
    name = f'cilrs_r{args.resnet}_{args.width}x{args.height}'
    t0 = time.perf_counter()
    source = save_checkpoint_if_changed(build_model(config, seed=0), cache / f'{name}.safetensors',
                                        save_checkpoint)
    calib = synthetic_calibration(config, args.calibration, seed=0)
    paths = build_engines(source, cache, kinds, calibration=calib, name=name)
    build_s = time.perf_counter() - t0
    engines = {k: load_engine(paths[k], threads=args.threads) for k in kinds}
    test = synthetic_calibration(config, 1, seed=123)[0]
    inputs = {'image': test[0], 'speed': test[1]}
    outputs = {}
    for k, e in engines.items():
        e.warmup(args.warmup)
        outputs[k] = e.infer(inputs)
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(args.runs):          # round-robin: shared-machine load hits all alike
        for k, e in engines.items():
            start = time.perf_counter()
            e.infer(inputs)
            times[k].append((time.perf_counter() - start) * 1e3)
    ref = outputs.get('fp32_torch')
    rows, result = [], {}
    for k in kinds:
        t = np.asarray(times[k])
        med, p90 = float(np.median(t)), float(np.percentile(t, 90))
        size_mb = engines[k].file_size() / 1e6
        err = float(np.abs(outputs[k]['branches'] - ref['branches']).max()) \
            if ref is not None else float('nan')
        rows.append([LABELS[k], med, p90, float(t.min()), size_mb, err])
        j = JSON_NAMES[k]
        result[f'{j}_ms'] = round(med, 3)
        result[f'{j}_p90_ms'] = round(p90, 3)
        result[f'{j}_mb'] = round(size_mb, 3)
        result[f'{j}_max_abs_diff_vs_fp32'] = err
    fp32 = [result[f'{j}_ms'] for j in ('fp32_torch', 'fp32_ort') if f'{j}_ms' in result]
    best_fp32 = min(fp32) if fp32 else float('nan')
    for j in ('w8a8', 'w4a4', 'bf16_torch'):
        if f'{j}_ms' in result:
            result[f'speedup_{j}_vs_best_fp32'] = round(best_fp32 / result[f'{j}_ms'], 3)
    shape = [1, 3, args.height, args.width]
    table(f'CILRS ResNet-{args.resnet}, input {shape}, batch 1, {args.threads} thread(s), '
          f'{args.runs} runs each (interleaved)',
          ['engine', 'median ms', 'p90 ms', 'min ms', 'size MB', 'max |diff| vs FP32'], rows)
    print(f'FLOPs: {macs["gflops"]:.1f} GFLOPs ({macs["gmacs"]:.2f} GMACs) at '
          f'{args.width}x{args.height} vs {PAPER_GFLOPS} GFLOPs in the paper; '
          f'{macs["params"] / 1e6:.1f} M parameters')
    for j in ('w8a8', 'w4a4', 'bf16_torch'):
        if f'speedup_{j}_vs_best_fp32' in result:
            print(f'speed-up {j} vs best FP32 ({best_fp32:.1f} ms): '
                  f'{result[f"speedup_{j}_vs_best_fp32"]:.2f}x')
    print(f'engines built/reused in {build_s:.1f} s under {cache}')
    if args.json:
        emit_json({**result, 'input_shape': shape, 'gflops': round(macs['gflops'], 3),
                   'gmacs': round(macs['gmacs'], 3), 'paper_gflops': PAPER_GFLOPS,
                   'params': macs['params'], 'resnet': args.resnet, 'runs': args.runs,
                   'threads': args.threads,
                   'backends': {k: engines[k].describe()['backend_version'] for k in kinds},
                   'device_id': engines[kinds[0]].describe()['device_id'],
                   **environment()})
    return 0


def save_checkpoint_if_changed(model, path: Path, save) -> Path:
    """Write the seeded checkpoint only when absent or different (keeps the cache warm)."""
    import tempfile
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix='.safetensors',
                                     delete=False) as f:
        tmp = Path(f.name)
    save(model, tmp)
    if path.exists() and path.read_bytes() == tmp.read_bytes():
        tmp.unlink()
    else:
        tmp.replace(path)
    return path
