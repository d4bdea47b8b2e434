"""`qail-ros bench quant`: the integer CPU kernels against float nn.Linear (qail_ros.quant.bench).

    qail-ros bench quant [--shapes 4096x4096,2048x2048] [--batch 1,16] [--runs 50] [--threads 1]
"""
from __future__ import annotations

import argparse

HELP = 'CPU speed of the integer quantized linear layers vs FP32 nn.Linear'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--shapes', default='4096x4096,2048x2048',
                        help='comma-separated in_features x out_features (default: %(default)s)')
    parser.add_argument('--batch', default='1', help='comma-separated batch sizes')
    parser.add_argument('--runs', type=int, default=50, help='timed calls per case')
    parser.add_argument('--threads', type=int, default=1, help='torch threads (default 1)')


def main(args) -> int:
    import torch

    from qail_ros.quant.bench import measure
    from qail_ros.report import emit_json, environment, table
    torch.set_num_threads(args.threads)
    shapes = [(int(k), int(n)) for k, n in (s.lower().split('x') for s in args.shapes.split(','))]
    batches = [int(b) for b in str(args.batch).split(',')]
    results = measure(shapes, batches, args.runs)
    table(f'quantized linear layers, CPU, {args.threads} thread(s), torch {torch.__version__}',
          ['shape', 'batch', 'implementation', 'median ms', 'p90 ms', 'x fp32', 'weights MiB'],
          [[f'{r["shape"][0]}x{r["shape"][1]}', r['batch'], r['impl'], r['median_ms'],
            r['p90_ms'], r['speedup_vs_fp32'], r['weight_mib']] for r in results])
    if getattr(args, 'json', False):
        emit_json({'results': results, 'threads': args.threads, 'torch': torch.__version__,
                   **environment()})
    return 0
