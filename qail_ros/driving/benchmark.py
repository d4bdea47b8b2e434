"""The closed-loop CILRS driving benchmark's pipeline (`qail-ros bench driving` runs it).

1. D_E: the privileged expert on the training town `highway` (seeds >= 1000), clean routes plus
   routes with action noise (CIL's recovery data: the executed action is perturbed, the label
   stays the expert's), at the camera size of the network (`collect_demos`).
2. The FP CILRS (qail_ros.cilrs.train.small_config) trained by branched behaviour cloning +
   speed prediction on D_E; cached as OUT/cilrs_fp.safetensors (+ cilrs_fp.json with the
   settings it was trained with; reused when they match) (`fp_model`).
3. Per training seed and bit width, the BatchNorm-folded FP model is the teacher of a quantized
   student per method (qail_ros.driving.qail_driving) (`run`).
4. Every policy is evaluated closed-loop with the same routes (seeds 0..routes-1) per density of
   each evaluation town (`evaluate_policy`).

`run(settings, out, retrain, progress)` returns the result dict; qail_ros.bench.driving
parses the command line, calls it and prints / writes the tables. `qail-ros driving ship`
(qail_ros.driving.ship) trains its shipped student with the same settings and data.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

_log = logging.getLogger(__name__)

__all__ = ['ALL_METHODS', 'ENGINE_METHODS', 'METRICS', 'FULL', 'QUICK', 'BC_KEYS',
           'CALIB_SEED', 'validate', 'collect_demos', 'fp_model', 'evaluate_policy',
           'aggregate', 'run', 'openvino_int8_policy', 'calibration_frames', 'brief']

ALL_METHODS = ('fp', 'ptq_rtn', 'qail', 'qail_qbc')
#: engines of the FP model evaluated closed loop when asked (--methods fp,openvino_int8):
#: openvino_int8 = NNCF INT8 calibrated on 100 camera frames of the FP policy driving the
#: training town (seeds 5000+, as models/cilrs-highway's W8A8), run by EnginePolicy
ENGINE_METHODS = ('openvino_int8',)
METRICS = ('success_rate', 'collision_rate', 'route_completion')
#: The CILRS paper's network (ResNet-34, 900x256 camera... ) costs ~14.5 GFLOPs per frame.
PAPER_GFLOPS = 14.5
FULL = {'seeds': 3, 'routes': 20, 'width': 160, 'height': 72, 'view_m': 50.0,
        'base_width': 16,
        'demo_densities': ['empty', 'regular', 'dense'], 'demo_episodes': 16,
        'noise_episodes': 6, 'noise': 0.2, 'bc_steps': 2500, 'bc_batch': 64, 'bc_lr': 3e-4,
        'fp_densities': ['regular', 'dense'], 'fp_episodes': 4, 'steps': 400,
        'batch_size': 64, 'lr': 1e-4, 'onpolicy_every': 100, 'onpolicy_episodes': 2,
        'onpolicy_max_steps': None, 'eval_max_steps': None}
QUICK = {'seeds': 1, 'routes': 2, 'width': 128, 'height': 56, 'view_m': 50.0, 'base_width': 16,
         'demo_densities': ['regular'], 'demo_episodes': 1, 'noise_episodes': 1, 'noise': 0.2,
         'bc_steps': 20, 'bc_batch': 16, 'bc_lr': 3e-4, 'fp_densities': ['regular'],
         'fp_episodes': 1, 'steps': 6, 'batch_size': 16, 'lr': 1e-4, 'onpolicy_every': 3,
         'onpolicy_episodes': 1, 'onpolicy_max_steps': 20, 'eval_max_steps': 40}
#: settings that change the FP model (the cache is reused only when these match).
BC_KEYS = ('width', 'height', 'view_m', 'base_width', 'demo_densities', 'demo_episodes',
           'noise_episodes', 'noise', 'bc_steps', 'bc_batch', 'bc_lr')
#: first route seed of the frames that calibrate INT8 engines (never an evaluation route)
CALIB_SEED = 5000


def validate(s: dict[str, Any]) -> None:
    from qail_ros.driving.env import DENSITIES, LAYOUTS
    from qail_ros.errors import ParameterError
    from qail_ros.qail.config import parse_bits
    bad = [m for m in s['methods'] if m not in ALL_METHODS + ENGINE_METHODS]
    if bad:
        raise ParameterError(f'unknown methods {bad}: use '
                             f'{", ".join(ALL_METHODS + ENGINE_METHODS)}')
    bad = [t for t in s['towns'] if t not in LAYOUTS]
    if bad:
        raise ParameterError(f'unknown towns {bad}: use {", ".join(LAYOUTS)}')
    bad = [d for d in s['densities'] + s['demo_densities'] if d not in DENSITIES]
    if bad:
        raise ParameterError(f'unknown densities {bad}: use {", ".join(DENSITIES)}')
    for b in s['bits']:
        parse_bits(b)
    if s['seeds'] < 1 or s['routes'] < 1:
        raise ParameterError('--seeds and --routes must be >= 1')


def collect_demos(s: dict[str, Any]) -> dict[str, Any]:
    """D_E on the training town: clean and noisy expert routes per training density."""
    import numpy as np

    from qail_ros import driving
    size = (s['width'], s['height'])
    parts = []
    for k, density in enumerate(s['demo_densities']):
        seed = 1000 + 100 * k
        parts.append(driving.collect_demonstrations(
            driving.ExpertPolicy(), density, 'highway', s['demo_episodes'], seed=seed,
            image_size=size, view_m=s['view_m']))
        if s['noise_episodes']:
            parts.append(driving.collect_demonstrations(
                driving.ExpertPolicy(), density, 'highway', s['noise_episodes'], seed=seed + 50,
                image_size=size, action_noise=s['noise'], view_m=s['view_m']))
    demos = {k: np.concatenate([p[k] for p in parts]) for k in ('image', 'speed', 'command',
                                                                'act')}
    _log.info(f'D_E: {len(demos["speed"])} samples from {len(parts)} collections '
              f'(commands {dict(zip(*np.unique(demos["command"], return_counts=True)))})')
    return demos


def fp_model(s: dict[str, Any], out: Path, demos: dict[str, Any], retrain: bool,
             progress: bool) -> tuple[Any, dict[str, Any]]:
    """The FP CILRS: loaded from OUT when trained with the same settings, else trained."""
    from qail_ros.cilrs.model import load_checkpoint, save_checkpoint
    from qail_ros.cilrs.train import small_config, train_bc
    path, meta_path = out / 'cilrs_fp.safetensors', out / 'cilrs_fp.json'
    want = {k: s[k] for k in BC_KEYS}
    if not retrain and path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get('settings') == want:
            _log.info(f'FP CILRS: cached {path}')
            return load_checkpoint(path), dict(meta, cached=True)
    config = small_config(s['width'], s['height'], s['base_width'])
    t0 = time.perf_counter()
    model, history = train_bc(demos, config, steps=s['bc_steps'], batch_size=s['bc_batch'],
                              lr=s['bc_lr'], log_every=max(1, s['bc_steps'] // 10),
                              progress=progress)
    meta = {'settings': want, 'config': config.to_dict(), 'samples': int(len(demos['speed'])),
            'seconds': round(time.perf_counter() - t0, 1), 'history': history}
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, path)
    meta_path.write_text(json.dumps(meta, indent=1) + '\n')
    _log.info(f'FP CILRS: trained in {meta["seconds"]:.0f}s -> {path}')
    return model, dict(meta, cached=False)


def evaluate_policy(policy, s: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """{town: {density: metrics}} over `routes` routes (seeds 0..routes-1)."""
    from qail_ros.driving.closed_loop import episode_metrics, rollout
    res: dict[str, dict[str, dict[str, float]]] = {}
    for town in s['towns']:
        for density in s['densities']:
            r = rollout(policy, density, town, s['routes'], 0,
                        image_size=(s['width'], s['height']), record=False,
                        max_steps=s['eval_max_steps'], view_m=s['view_m'])
            m = episode_metrics(r.infos)
            m['steps_per_s'] = round(r.steps_per_s, 1)
            res.setdefault(town, {})[density] = m
    return res


def aggregate(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean (and std over seeds) of each metric per town and density."""
    import numpy as np
    agg: dict[str, Any] = {}
    for town, cells in per_seed[0].items():
        for density in cells:
            vals = {k: [p[town][density][k] for p in per_seed] for k in METRICS}
            agg.setdefault(town, {})[density] = {
                **{k: float(np.mean(v)) for k, v in vals.items()},
                **{f'{k}_seed_std': float(np.std(v)) for k, v in vals.items()},
                'per_seed': vals}
    return agg


def run(s: dict[str, Any], out: Path, retrain: bool, progress: bool) -> dict[str, Any]:
    """Everything of one benchmark run; returns the result dict (without provenance)."""
    import torch

    from qail_ros.cilrs.model import count_macs
    from qail_ros.cilrs.train import CILRSPolicy
    from qail_ros.driving.qail_driving import (PackedCILRS, PackedPolicy, build_driving_data,
                                               train_driving_student)
    from qail_ros.qail.config import TrainConfig
    from qail_ros.qail.trainer import output_gap
    from qail_ros.quant.api import quantization_report

    t_start = time.perf_counter()
    t0 = time.perf_counter()
    demos = collect_demos(s)
    demo_s = time.perf_counter() - t0
    model, meta = fp_model(s, out, demos, retrain, progress)
    macs = count_macs(model.config)
    teacher = PackedCILRS(model.fused()).eval()
    results: dict[str, Any] = {}
    training: dict[str, list[dict[str, Any]]] = {}
    t0 = time.perf_counter()
    fp_eval = evaluate_policy(CILRSPolicy(model), s)
    _log.info(f'fp: {brief(fp_eval)} ({time.perf_counter() - t0:.0f}s)')
    results['fp'] = {'method': 'fp', 'bits': 'fp32', 'seeds': 1, 'metrics': aggregate([fp_eval])}
    if 'openvino_int8' in s['methods']:
        t0 = time.perf_counter()
        ev = evaluate_policy(openvino_int8_policy(model, out, s), s)
        _log.info(f'openvino_int8: {brief(ev)} ({time.perf_counter() - t0:.0f}s)')
        results['openvino_int8'] = {'method': 'openvino_int8', 'bits': 'w8a8', 'seeds': 1,
                                    'metrics': aggregate([ev])}
    runs: dict[str, tuple[str, str, list[dict[str, Any]]]] = {}
    size = (s['width'], s['height'])
    quantized = [m for m in s['methods'] if m not in ('fp',) + ENGINE_METHODS]
    first = s.get('first_seed', 0)
    for seed in range(first, first + s['seeds']) if quantized else ():
        t0 = time.perf_counter()
        data = build_driving_data(teacher, demos=demos, densities=s['fp_densities'],
                                  fp_episodes=s['fp_episodes'], seed=seed, image_size=size,
                                  view_m=s['view_m'])
        _log.info(f'seed {seed}: D_QAIL {data.counts()} ({time.perf_counter() - t0:.0f}s)')
        gen = torch.Generator().manual_seed(seed)
        probe = data.obs[torch.randperm(len(data), generator=gen)[:256]]
        for bits in s['bits']:
            for method in quantized:
                cfg = TrainConfig(method=method, bits=bits, steps=s['steps'], lr=s['lr'],
                                  batch_size=s['batch_size'], seed=seed,
                                  onpolicy_every=s['onpolicy_every'],
                                  onpolicy_episodes=s['onpolicy_episodes'],
                                  onpolicy_max_steps=s['onpolicy_max_steps'],
                                  calib_samples=256, log_every=max(1, s['steps'] // 5),
                                  progress=progress, extra={'benchmark': 'driving'})
                res = train_driving_student(teacher, cfg, data, densities=s['fp_densities'],
                                            image_size=size, view_m=s['view_m'])
                report = quantization_report(res.student)
                gap = output_gap(res.student, teacher, probe)
                t1 = time.perf_counter()
                ev = evaluate_policy(PackedPolicy(res.student), s)
                key = method if bits == s['bits'][0] else f'{method}_{bits}'
                runs.setdefault(key, (method, bits, []))[2].append(ev)
                training.setdefault(key, []).append({
                    'seed': seed, 'train_seconds': round(res.seconds, 1),
                    'eval_seconds': round(time.perf_counter() - t1, 1),
                    'onpolicy_states': res.onpolicy_states, 'output_gap': round(gap, 4),
                    'quantized_layers': len(report['layers']),
                    'skipped_layers': sorted(report['skipped']),
                    'final': res.history[-1] if res.history else {}})
                _log.info(f'seed {seed} {bits} {method}: {brief(ev)} (train {res.seconds:.0f}s, '
                          f'gap {gap:.4f}, eval {time.perf_counter() - t1:.0f}s)')
    for key, (method, bits, per_seed) in runs.items():
        results[key] = {'method': method, 'bits': bits, 'seeds': len(per_seed),
                        'metrics': aggregate(per_seed), 'training': training[key]}
    return {'results': results,
            'model': {'config': model.config.to_dict(), 'macs': macs['macs'],
                      'gflops': round(macs['gflops'], 4), 'params': macs['params'],
                      'paper_gflops': PAPER_GFLOPS, 'bc_samples': meta.get('samples'),
                      'bc_seconds': meta.get('seconds'), 'bc_cached': meta.get('cached'),
                      'bc_history': meta.get('history', [])[-3:]},
            'demo_seconds': round(demo_s, 1),
            'seconds': round(time.perf_counter() - t_start, 1)}


def openvino_int8_policy(model, out: Path, s: dict[str, Any]):
    """The FP model's OpenVINO INT8 engine (NNCF, calibrated on 100 frames of the FP policy
    driving the training town, seeds 5000+; cached under OUT/engines) as an EnginePolicy."""
    from qail_ros.cilrs.export import build_engines
    from qail_ros.driving.engine_policy import EnginePolicy
    calib = calibration_frames(model, n=100, view_m=s['view_m'])
    details = {'camera': {'width': s['width'], 'height': s['height'], 'view_m': s['view_m']}}
    paths = build_engines(out / 'cilrs_fp.safetensors', out / 'engines', ['w8a8_openvino'],
                          calibration=calib, name='cilrs_fp', details=details,
                          calibration_note=f'{len(calib)} camera frames of the FP policy on '
                                           f'highway (seeds {CALIB_SEED}+)')
    return EnginePolicy(paths['w8a8_openvino'])


def brief(ev: dict[str, Any]) -> str:
    return ', '.join(f'{t}/{d} S{m["success_rate"]:.2f} C{m["collision_rate"]:.2f} '
                     f'RC{m["route_completion"]:.2f}' for t, c in ev.items() for d, m in c.items())


def calibration_frames(model, n: int = 64, *, view_m: float = 50.0, seed: int = CALIB_SEED,
                       densities=('empty', 'regular', 'dense')) -> list[tuple[Any, Any]]:
    """`n` (image, speed) batches of 1, normalised as the node does, from the FP policy driving
    the training town (one route per density, seeds `seed`+): the W8A8 calibration set."""
    import numpy as np

    from qail_ros.cilrs.config import preprocess_frame
    from qail_ros.cilrs.train import CILRSPolicy
    from qail_ros.driving.closed_loop import rollout
    c = model.config
    images, speeds = [], []
    for k, density in enumerate(densities):
        r = rollout(CILRSPolicy(model), density, 'highway', 1, seed + k,
                    image_size=(c.width, c.height), record=True, view_m=view_m)
        images.append(r.image)
        speeds.append(r.speed)
    image, speed = np.concatenate(images), np.concatenate(speeds)
    pick = np.linspace(0, len(speed) - 1, n).round().astype(int)
    out = []
    for i in pick:
        x = preprocess_frame(image[i], float(speed[i]), c)
        out.append((x['image'], x['speed']))
    return out
