"""CILRS latency per engine at batch 1: FP32 torch, BF16 torch, FP32 onnxruntime, W8A8
onnxruntime (int8 kernels), W4A4 on int8 kernels, and (when openvino + nncf are installed)
OpenVINO FP32 / BF16 / INT8; median and p90 in the same run.

    qail-ros bench cilrs [--resnet 34] [--runs 50] [--calibration 100] [--engines ...] [--json]
    qail-ros bench cilrs --resnet 18 --height 128 --width 448 --runs 10 --calibration 16  # quick

OpenVINO INT8 (`openvino_int8_*`) is what a user who knows OpenVINO makes: NNCF post-training
quantization with its defaults on the calibration frames, compiled with OpenVINO's defaults.
Every INT8 engine (onnxruntime W8A8 too) is calibrated on the same `--calibration` frames.
Accuracy: max / mean |engine - FP32 torch| over every output of `--holdout` held-out frames.
`best_engine` is what `qail-ros export --backend auto` keeps among these engines when its
accuracy bound is OpenVINO INT8's own max abs difference (equal or better accuracy): the
fastest such engine by median ms; `ratio_vs_openvino_int8` = openvino_int8_ms / best_ms (1.0
exactly when the winner is that same OpenVINO INT8 engine, as our export builds it too).
`rebuilt` lists the engines built in this run (none when the cache was warm: the cache keys
come from the checkpoint's tensors, so re-saving the seeded checkpoint rebuilds nothing).

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


from qail_ros.report import emit_json, environment, table

HELP = ('CILRS latency per engine (FP32 torch/ORT/OpenVINO, BF16, W8A8 ORT/OpenVINO INT8, '
        'W4A4-on-int8), batch 1')
PAPER_GFLOPS = 14.5
LABELS = {'fp32_torch': 'FP32 torch', 'bf16_torch': 'BF16 torch',
          'fp32_ort': 'FP32 onnxruntime', 'w8a8_ort': 'W8A8 onnxruntime (int8)',
          'w4a4_int8': 'W4A4 on int8 kernels (torch._int_mm)',
          'fp32_openvino': 'FP32 OpenVINO', 'bf16_openvino': 'BF16 OpenVINO',
          'w8a8_openvino': 'INT8 OpenVINO (NNCF defaults)',
          'w8a8_ort_openvino': 'W8A8 QDQ graph on OpenVINO'}
JSON_NAMES = {'fp32_torch': 'fp32_torch', 'bf16_torch': 'bf16_torch', 'fp32_ort': 'fp32_ort',
              'w8a8_ort': 'w8a8', 'w4a4_int8': 'w4a4', 'fp32_openvino': 'openvino_fp32',
              'bf16_openvino': 'openvino_bf16', 'w8a8_openvino': 'openvino_int8',
              'w8a8_ort_openvino': 'openvino_w8a8_qdq'}
BASE = ('fp32_torch', 'bf16_torch', 'fp32_ort', 'w8a8_ort', 'w4a4_int8')


def default_engines() -> list[str]:
    from qail_ros.engines.openvino_engine import nncf_available
    return list(BASE) + ([k for k in LABELS if k not in BASE] if nncf_available() else [])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--resnet', type=int, default=34, choices=(18, 34))
    parser.add_argument('--height', type=int, default=256)
    parser.add_argument('--width', type=int, default=900)
    parser.add_argument('--runs', type=int, default=50, help='timed runs per engine (>= 1)')
    parser.add_argument('--warmup', type=int, default=3, help='untimed runs per engine')
    parser.add_argument('--threads', type=int, default=1, help='CPU threads of every engine')
    parser.add_argument('--engines', default=None,
                        help='comma-separated subset of ' + ','.join(LABELS) + ' (default: '
                        'all; the OpenVINO ones when openvino and nncf are installed)')
    parser.add_argument('--calibration', type=int, default=100,
                        help='synthetic calibration frames of every INT8 engine (NNCF and '
                        'onnxruntime alike) and of W4A4 (default %(default)s)')
    parser.add_argument('--holdout', type=int, default=4,
                        help='held-out synthetic frames for the accuracy columns')
    parser.add_argument('--cache-dir', default=os.environ.get(
        'QAIL_ROS_ENGINE_CACHE', os.path.expanduser('~/.cache/qail_ros/engines/cilrs_bench')),
        help='where engines are built / reused (the engine cache)')


def main(args) -> int:
    import torch

    from qail_ros.cilrs.config import CILRSConfig
    from qail_ros.cilrs.export import build_engines, synthetic_calibration
    from qail_ros.cilrs.model import build_model, count_macs, save_checkpoint
    from qail_ros.engines import load_engine
    from qail_ros.engines.calibration import accuracy, time_engines
    kinds = [k.strip() for k in (args.engines or ','.join(default_engines())).split(',')
             if k.strip()]
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
    model = build_model(config, seed=0)
    source = save_checkpoint_if_changed(model, cache / f'{name}.safetensors', save_checkpoint)
    calib = synthetic_calibration(config, args.calibration, seed=0)
    rebuilt: list[str] = []
    paths = build_engines(source, cache, kinds, calibration=calib, name=name, rebuilt=rebuilt)
    build_s = time.perf_counter() - t0
    engines = {k: load_engine(paths[k], threads=args.threads) for k in kinds}
    held = synthetic_calibration(config, max(args.holdout, 1), seed=123)
    feeds = [{'image': i, 'speed': s} for i, s in held]
    with torch.no_grad():       # the reference: the FP32 checkpoint itself
        reference = [dict(zip(('branches', 'speed_pred'),
                              (t.numpy() for t in model(torch.from_numpy(f['image']),
                                                        torch.from_numpy(f['speed'])))))
                     for f in feeds]
    acc = {k: accuracy(e, feeds, reference) for k, e in engines.items()}
    timing = time_engines(engines, feeds[0], runs=args.runs, warmup=args.warmup)
    rows, result = [], {}
    for k in kinds:
        t = timing[k]
        size_mb = engines[k].file_size() / 1e6
        rows.append([LABELS[k], t['ms'], t['p90_ms'], t['min_ms'], t['cpu_ms'], size_mb,
                     acc[k]['max_abs_diff'], acc[k]['mean_abs_diff']])
        j = JSON_NAMES[k]
        result[f'{j}_ms'] = round(t['ms'], 3)
        result[f'{j}_p90_ms'] = round(t['p90_ms'], 3)
        result[f'{j}_cpu_ms'] = round(t['cpu_ms'], 3)
        result[f'{j}_mb'] = round(size_mb, 3)
        result[f'{j}_max_abs_diff_vs_fp32'] = acc[k]['max_abs_diff']
        result[f'{j}_mean_abs_diff_vs_fp32'] = acc[k]['mean_abs_diff']
    fp32 = [result[f'{j}_ms'] for j in ('fp32_torch', 'fp32_ort', 'openvino_fp32')
            if f'{j}_ms' in result]
    best_fp32 = min(fp32) if fp32 else float('nan')
    for j in ('w8a8', 'w4a4', 'bf16_torch', 'openvino_int8', 'openvino_bf16'):
        if f'{j}_ms' in result:
            result[f'speedup_{j}_vs_best_fp32'] = round(best_fp32 / result[f'{j}_ms'], 3)
    best = pick_best(kinds, timing, acc)
    if best is not None:
        result.update(best)
    shape = [1, 3, args.height, args.width]
    table(f'CILRS ResNet-{args.resnet}, input {shape}, batch 1, {args.threads} thread(s), '
          f'{args.runs} runs each (interleaved), accuracy on {len(feeds)} held-out frames',
          ['engine', 'median ms', 'p90 ms', 'min ms', 'cpu ms', 'size MB',
           'max |diff| vs FP32', 'mean |diff|'], rows)
    print(f'FLOPs: {macs["gflops"]:.1f} GFLOPs ({macs["gmacs"]:.2f} GMACs) at '
          f'{args.width}x{args.height} vs {PAPER_GFLOPS} GFLOPs in the paper; '
          f'{macs["params"] / 1e6:.1f} M parameters')
    for j in ('w8a8', 'w4a4', 'bf16_torch', 'openvino_int8'):
        if f'speedup_{j}_vs_best_fp32' in result:
            print(f'speed-up {j} vs best FP32 ({best_fp32:.1f} ms): '
                  f'{result[f"speedup_{j}_vs_best_fp32"]:.2f}x')
    if best is not None:
        print(f"best engine at OpenVINO INT8's accuracy or better: {best['best_engine']} "
              f"({best['best_ms']:.1f} ms); OpenVINO INT8 {result['openvino_int8_ms']:.1f} ms:"
              f" ratio {best['ratio_vs_openvino_int8']:.3f}")
    print(f'engines built/reused in {build_s:.1f} s under {cache}; rebuilt now: '
          f'{rebuilt or "none"}')
    if args.json:
        emit_json({**result, 'rebuilt': rebuilt, 'build_s': round(build_s, 1),
                   'input_shape': shape, 'gflops': round(macs['gflops'], 3),
                   'gmacs': round(macs['gmacs'], 3), 'paper_gflops': PAPER_GFLOPS,
                   'params': macs['params'], 'resnet': args.resnet, 'runs': args.runs,
                   'threads': args.threads, 'calibration_frames': args.calibration,
                   'holdout_frames': len(feeds),
                   'backends': {k: engines[k].describe()['backend_version'] for k in kinds},
                   'device_id': engines[kinds[0]].describe()['device_id'],
                   **environment()})
    return 0


def pick_best(kinds, timing, acc) -> dict | None:
    """The `--backend auto` choice with OpenVINO INT8's max abs difference as the bound: the
    fastest engine (median ms) at equal or better accuracy. None without OpenVINO INT8."""
    if 'w8a8_openvino' not in kinds:
        return None
    bound = acc['w8a8_openvino']['max_abs_diff']
    ok = [k for k in kinds if acc[k]['max_abs_diff'] <= bound]
    best = min(ok, key=lambda k: timing[k]['ms'])
    ov = timing['w8a8_openvino']
    return {'best_engine': JSON_NAMES[best], 'best_kind': best,
            'best_ms': round(timing[best]['ms'], 3),
            'best_max_abs_diff_vs_fp32': acc[best]['max_abs_diff'],
            'best_is_openvino_int8': best == 'w8a8_openvino',
            'ratio_vs_openvino_int8': round(ov['ms'] / timing[best]['ms'], 4),
            'cpu_ratio_vs_openvino_int8': round(ov['cpu_ms'] / timing[best]['cpu_ms'], 4),
            'accuracy_bound_max_abs_diff': bound}


def save_checkpoint_if_changed(model, path: Path, save) -> Path:
    """Write the seeded checkpoint only when absent or its tensors differ (the engine cache is
    keyed by the tensors, so even a rewritten file keeps it warm)."""
    import tempfile

    from qail_ros.engines.cache import content_hash
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix='.safetensors',
                                     delete=False) as f:
        tmp = Path(f.name)
    save(model, tmp)
    if path.exists() and content_hash(path) == content_hash(tmp):
        tmp.unlink()
    else:
        tmp.replace(path)
    return path
