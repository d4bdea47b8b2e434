"""Data-parallel scaling of QAIL training: samples/s with 1 and 2 processes (torchrun, gloo).

    qail-ros bench train [--models mlp,cilrs] [--steps 30] [--json]

For each student (the physics MLP, W4A4 LSQ; the driving CILRS on packed rows, W4A4 LSQ) the
same QAIL+QBC training steps run once in one process and once under torchrun with two
processes at the same global batch; each process has one torch thread, so 1 vs 2 processes
compares fairly on a machine with 2 free cores. Timed: `--steps` steps after `--warmup` (the
clock starts at the forward of the first timed step and stops at the forward after the last),
best of `--repeats` alternating runs.
scaling_efficiency = samples/s at 2 / (2 x samples/s at 1). Batches are large enough that the
compute of a step dominates the gradient all-reduce (MLP 4096, CILRS 64 samples). Synthetic
data and seeded random teachers: only the speed means anything.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qail_ros.report import emit_json, environment, table

HELP = 'data-parallel training throughput, 1 vs 2 processes (torchrun, gloo)'
MODELS = {'mlp': 4096, 'cilrs': 64}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--models', default=','.join(MODELS),
                        help=f'comma-separated subset of {",".join(MODELS)}')
    parser.add_argument('--steps', type=int, default=30, help='timed steps per run')
    parser.add_argument('--warmup', type=int, default=5, help='untimed steps first')
    parser.add_argument('--batch', type=int, default=None,
                        help='global batch (default: MLP 4096, CILRS 64)')
    parser.add_argument('--repeats', type=int, default=2,
                        help='runs of each setting, alternating 1 and 2 processes; the best '
                             'counts (a shared machine only ever slows a run down)')
    parser.add_argument('--quick', action='store_true',
                        help='5 timed steps, one repeat (a smoke test)')
    parser.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--model', default='mlp', help=argparse.SUPPRESS)
    parser.add_argument('--out', default=None, help=argparse.SUPPRESS)


# -- the worker (one process of a run) ---------------------------------------------------------
def _student(model: str, batch: int):
    """(teacher, data) of a synthetic QAIL problem for `model`."""
    import torch
    from qail_ros.qail.data import ImitationData
    torch.manual_seed(0)
    if model == 'mlp':
        from qail_ros.physics.policy import MLPPolicy
        teacher = MLPPolicy(24, 6, hidden=256, layers=3)
        obs = torch.randn(max(4 * batch, 8192), 24)
        teacher.set_normalization(obs)
    else:
        from qail_ros.cilrs.model import build_model
        from qail_ros.cilrs.train import small_config
        from qail_ros.driving.qail_driving import PackedCILRS
        cfg = small_config(128, 56)
        teacher = PackedCILRS(build_model(cfg, seed=0).fused())
        n = max(4 * batch, 256)
        obs = torch.cat([torch.randint(0, 256, (n, 56 * 128 * 3)).float(),
                         torch.rand(n, 1) * 10, torch.randint(1, 7, (n, 1)).float()], dim=1)
    teacher.eval()
    with torch.no_grad():
        act = torch.cat([teacher(obs[k:k + 256]) for k in range(0, len(obs), 256)])
    return teacher, ImitationData.from_sources(fp=(obs, act))


def _worker(args) -> int:
    import torch
    from qail_ros.qail.config import TrainConfig
    from qail_ros.qail.trainer import QAILTrainer, make_student
    from qail_ros.training.distributed import setup, teardown
    torch.set_num_threads(1)
    batch = args.batch or MODELS[args.model]
    teacher, data = _student(args.model, batch)
    cfg = TrainConfig(method='qail_qbc', bits='w4a4', steps=args.warmup + args.steps + 1,
                      batch_size=batch, progress=False, calib_samples=256,
                      log_every=10 ** 9)
    trainer = QAILTrainer(teacher, cfg, data)
    student = make_student(teacher, cfg, data.obs[:256])
    stamps: list[float] = []
    student.register_forward_pre_hook(lambda *_: stamps.append(time.perf_counter()))
    trainer.train(student)
    dist = setup('cpu')
    if dist.is_main:
        seconds = stamps[args.warmup + args.steps] - stamps[args.warmup]
        Path(args.out).write_text(json.dumps({
            'model': args.model, 'processes': dist.world, 'batch': batch,
            'steps': args.steps, 'seconds': seconds,
            'samples_per_s': batch * args.steps / seconds}))
    teardown()
    return 0


# -- the driver --------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _run(model: str, nproc: int, args, tmp: Path) -> dict:
    out = tmp / f'{model}_{nproc}.json'
    worker = ['-m', 'qail_ros.cli', 'bench', 'train', '--worker', '--model', model,
              '--steps', str(args.steps), '--warmup', str(args.warmup), '--out', str(out)]
    if args.batch:
        worker += ['--batch', str(args.batch)]
    if nproc == 1:
        cmd = [sys.executable] + worker
    else:
        cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc-per-node', str(nproc),
               '--master-addr', '127.0.0.1', '--master-port', str(_free_port())] + worker
    env = dict(os.environ, OMP_NUM_THREADS='1')
    env.pop('WORLD_SIZE', None)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0 or not out.is_file():
        raise RuntimeError(f'bench train: the {nproc}-process {model} run failed:\n'
                           f'{r.stdout[-2000:]}{r.stderr[-4000:]}')
    return json.loads(out.read_text())


def main(args) -> int:
    if args.worker:
        return _worker(args)
    if args.quick:
        args.steps, args.warmup, args.repeats = 5, 2, 1
    models = [m.strip() for m in args.models.split(',') if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        from qail_ros.errors import ParameterError
        raise ParameterError(f'--models {unknown}: choose from {", ".join(MODELS)}')
    results = []
    with tempfile.TemporaryDirectory(prefix='qail_bench_train_') as d:
        for model in models:
            ones, twos = [], []
            for _ in range(max(1, args.repeats)):
                ones.append(_run(model, 1, args, Path(d)))
                twos.append(_run(model, 2, args, Path(d)))
            one = max(ones, key=lambda r: r['samples_per_s'])
            s1 = one['samples_per_s']
            s2 = max(r['samples_per_s'] for r in twos)
            results.append({'model': model, 'batch': one['batch'], 'steps': args.steps,
                            'samples_per_s_1': round(s1, 2), 'samples_per_s_2': round(s2, 2),
                            'scaling_efficiency': round(s2 / (2 * s1), 3)})
    table('qail-ros bench train: QAIL+QBC W4A4 steps, 1 vs 2 processes (1 thread each, gloo)',
          ['model', 'global batch', 'samples/s 1 proc', 'samples/s 2 procs', 'efficiency'],
          [[r['model'], r['batch'], r['samples_per_s_1'], r['samples_per_s_2'],
            r['scaling_efficiency']] for r in results])
    if args.json:
        emit_json({**results[0], 'results': results, 'goal_efficiency': 0.8,
                   'environment': environment()})
    return 0
