"""Build the trained CILRS engines shipped in models/cilrs-highway/ from the benchmark's FP model.

    qail-ros driving ship --fp bench-results/driving/cilrs_fp.safetensors \
        --out models/cilrs-highway [--seed 0] [--routes 20]

1. The FP CILRS `--fp` (a `qail-ros bench driving` model: cilrs_fp.safetensors, its training
   settings in cilrs_fp.json next to it) is the source of every engine.
2. The W4A4 student: QAIL+QBC exactly as `qail-ros bench driving` trains it for one seed
   (qail_ros.driving.benchmark: the same D_E demonstrations, D_QAIL = D_E + FP rollouts, on-policy
   QBC rollouts, TrainConfig), saved as a quant.save_quantized file of the BN-folded CILRS
   (`save_cilrs_student`: the trainer's student wraps CILRS in PackedCILRS).
3. Engines through qail_ros.cilrs.export.build_engines (manifests with the source hash):
   fp32_torch (the checkpoint itself), w8a8_ort (onnxruntime static quantization of the
   convolutions, calibrated on camera frames of the FP policy driving the training town, seeds
   5000+, not the evaluation routes; the MLP heads stay FP32, see W8A8_OPS) and w4a4_int8 (the
   student on int8 kernels).
4. Every engine is evaluated closed loop through `EnginePolicy` (the node's preprocessing and
   post-processing, batch 1, the engine itself) on the benchmark's cells; written to
   OUT/closed_loop.json.

The student file and its training record are kept in `--work` (default
bench-results/ship-work, git-ignored) and reused when present.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qail_ros.driving.benchmark import CALIB_SEED, calibration_frames

__all__ = ['save_cilrs_student', 'calibration_frames', 'train_student', 'evaluate_engines',
           'ship']

_log = logging.getLogger(__name__)

NAME = 'cilrs_highway'
KINDS = ('fp32_torch', 'w8a8_ort', 'w4a4_int8')
#: the W8A8 engine quantizes the convolutions (99 % of the MACs); with the Gemm MLP heads
#: quantized too (per-tensor uint8 activations) single outputs of rarely used branches were up
#: to 0.32 off the FP ones on rendered frames, with Conv only at most 0.042
W8A8_OPS = ('Conv',)


def save_cilrs_student(student, path: str | Path) -> Path:
    """Save the CILRS inside a quantized PackedCILRS (QAILTrainer's driving student) as a
    quant.save_quantized file that load_quantized rebuilds on a plain BN-folded CILRS."""
    import copy

    from qail_ros import quant
    from qail_ros.quant.api import INFO_ATTR
    info = getattr(student, INFO_ATTR)
    inner = copy.deepcopy(student.model)

    def strip(name: str) -> str:
        return name[len('model.'):] if name.startswith('model.') else name

    setattr(inner, INFO_ATTR, {'config': dict(info['config']),
                               'layers': [strip(n) for n in info['layers']],
                               'skipped': {strip(k): v for k, v in info['skipped'].items()}})
    return quant.save_quantized(inner, path)


def train_student(fp_path: Path, work: Path, seed: int) -> tuple[Path, dict[str, Any]]:
    """QAIL+QBC W4A4 student of the FP model, as `qail-ros bench driving` trains it."""
    import torch

    from qail_ros.driving.benchmark import FULL, collect_demos
    from qail_ros.cilrs.model import load_checkpoint
    from qail_ros.driving.qail_driving import (PackedCILRS, build_driving_data,
                                               train_driving_student)
    from qail_ros.qail.config import TrainConfig
    from qail_ros.qail.trainer import output_gap
    path = work / f'{NAME}_w4a4_qail_qbc_seed{seed}.safetensors'
    record_path = path.with_suffix('.json')
    if path.is_file() and record_path.is_file():
        _log.info(f'student: cached {path}')
        return path, json.loads(record_path.read_text())
    meta = json.loads(fp_path.with_suffix('.json').read_text())
    s = dict(FULL)
    if meta.get('settings'):
        s.update(meta['settings'])
    model = load_checkpoint(fp_path)
    size = (s['width'], s['height'])
    t0 = time.perf_counter()
    demos = collect_demos(s)
    teacher = PackedCILRS(model.fused()).eval()
    data = build_driving_data(teacher, demos=demos, densities=s['fp_densities'],
                              fp_episodes=s['fp_episodes'], seed=seed, image_size=size,
                              view_m=s['view_m'])
    _log.info(f'D_QAIL {data.counts()} ({time.perf_counter() - t0:.0f}s)')
    cfg = TrainConfig(method='qail_qbc', bits='w4a4', steps=s['steps'], lr=s['lr'],
                      batch_size=s['batch_size'], seed=seed, onpolicy_every=s['onpolicy_every'],
                      onpolicy_episodes=s['onpolicy_episodes'],
                      onpolicy_max_steps=s['onpolicy_max_steps'], calib_samples=256,
                      log_every=max(1, s['steps'] // 5), progress=False,
                      extra={'benchmark': 'driving'})
    res = train_driving_student(teacher, cfg, data, densities=s['fp_densities'],
                                image_size=size, view_m=s['view_m'])
    gen = torch.Generator().manual_seed(seed)
    probe = data.obs[torch.randperm(len(data), generator=gen)[:256]]
    gap = output_gap(res.student, teacher, probe)
    work.mkdir(parents=True, exist_ok=True)
    save_cilrs_student(res.student, path)
    record = {'method': 'qail_qbc', 'bits': 'w4a4', 'seed': seed,
              'train_seconds': round(res.seconds, 1), 'onpolicy_states': res.onpolicy_states,
              'output_gap': round(gap, 4), 'data': data.counts(),
              'settings': {k: s[k] for k in ('steps', 'lr', 'batch_size', 'onpolicy_every',
                                             'onpolicy_episodes', 'fp_densities',
                                             'fp_episodes')},
              'final': res.history[-1] if res.history else {}}
    record_path.write_text(json.dumps(record, indent=1, default=str) + '\n')
    _log.info(f'student: trained in {res.seconds:.0f}s, output gap to FP {gap:.4f} -> {path}')
    return path, record


def evaluate_engines(paths: dict[str, Path], cells: list[tuple[str, str]], routes: int,
                     view_m: float) -> dict[str, Any]:
    """{kind: {town/density: metrics + per-episode outcomes}} through EnginePolicy."""
    from qail_ros.driving.engine_policy import EnginePolicy, evaluate_engine
    out: dict[str, Any] = {}
    for kind, path in paths.items():
        policy = EnginePolicy(path)
        for town, density in cells:
            t0 = time.perf_counter()
            m = evaluate_engine(policy, town, density, routes, 0, view_m=view_m)
            out.setdefault(kind, {})[f'{town}/{density}'] = m
            _log.info(f'{kind} {town}/{density}: success {m["success_rate"]:.2f} collision '
                      f'{m["collision_rate"]:.2f} route {m["route_completion"]:.3f} '
                      f'({time.perf_counter() - t0:.0f}s)')
    return out


def ship(fp_path: str | Path, out: str | Path, *, work: str | Path = 'bench-results/ship-work',
         seed: int = 0, routes: int = 20, towns: Sequence[str] = ('highway', 'merge'),
         densities: Sequence[str] = ('empty', 'regular', 'dense')) -> dict[str, Any]:
    """Steps 1-4 above: the student, the engines in `out`, their closed-loop evaluation
    (`routes` per town and density; 0: none) written to OUT/closed_loop.json and returned."""
    import torch

    from qail_ros.cilrs.export import build_engines
    from qail_ros.cilrs.model import load_checkpoint
    from qail_ros.engines.manifest import sha256_file
    torch.set_num_threads(1)
    fp_path, out, work = Path(fp_path), Path(out), Path(work)
    meta = json.loads(fp_path.with_suffix('.json').read_text())
    view_m = float(meta['settings']['view_m'])
    student, record = train_student(fp_path, work, seed)
    model = load_checkpoint(fp_path)
    calib = calibration_frames(model, view_m=view_m)
    c = model.config
    details = {'trained_on': f'highway-env `highway` town, camera {c.width}x{c.height} '
                             f'top-down covering {view_m:g} m (qail-ros bench driving)',
               'source_model_sha256': sha256_file(fp_path),
               'camera': {'width': c.width, 'height': c.height, 'view_m': view_m}}
    paths = build_engines(fp_path, out, KINDS, calibration=calib, w4a4_student=student,
                          name=NAME, details=details,
                          calibration_note=f'{len(calib)} camera frames of the FP policy on '
                                           f'highway (seeds {CALIB_SEED}+)',
                          w8a8_op_types=W8A8_OPS)
    for kind, path in paths.items():
        _log.info(f'{kind:12s} {path} ({path.stat().st_size / 1e6:.2f} MB)')
    result: dict[str, Any] = {'fp_source': str(fp_path), 'student': record,
                              'engines': {k: str(v) for k, v in paths.items()}}
    if routes:
        cells = [(t, d) for t in towns for d in densities]
        result['routes'] = routes
        result['closed_loop'] = evaluate_engines(paths, cells, routes, view_m)
    (out / 'closed_loop.json').write_text(json.dumps(result, indent=1) + '\n')
    return result
