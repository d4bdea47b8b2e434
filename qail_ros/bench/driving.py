"""`qail-ros bench driving`: closed-loop CILRS driving, FP vs PTQ-RTN vs QAIL vs QAIL+QBC.

The driving counterpart of `bench physics` (issue #5 item 5). One run:

1. D_E: the privileged expert on the training town `highway` (seeds >= 1000), clean routes plus
   routes with action noise (CIL's recovery data: the executed action is perturbed, the label
   stays the expert's), at the camera size of the network.
2. The FP CILRS (qail_ros.cilrs.train.small_config: ResNet-18, 16 stem channels) trained by
   branched behaviour cloning + speed prediction on D_E; cached as OUT/cilrs_fp.safetensors
   (+ cilrs_fp.json with the settings it was trained with; reused when they match).
3. Per training seed and bit width, the BatchNorm-folded FP model is the teacher of a quantized
   student per method (qail_ros.driving.qail_driving: packed observations through the generic
   QAILTrainer): ptq_rtn (per-tensor round-to-nearest, no training), qail (LSQ QAT on D_QAIL =
   D_E ∪ D_FP), qail_qbc (+ L2 alignment with the teacher on D_QAIL and on states of on-policy
   rollouts of the student on the training town).
4. Every policy is evaluated closed-loop with the same routes (seeds 0..routes-1) per density of
   each evaluation town (default: the unseen `merge`). FP is deterministic and evaluated once.

Writes OUT/driving.json and OUT/driving.md; prints the table; `--json` prints the result as
the last line.

    qail-ros bench driving --seeds 3 --routes 20 --town merge
    qail-ros bench driving --quick            # tiny data, few steps, 2 routes (~1 min)
"""
from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from qail_ros.bench.report import csv_list, write_results

HELP = ('closed-loop CILRS driving (highway-env): FP vs PTQ-RTN vs QAIL vs QAIL+QBC success, '
        'collision and route completion of W4A4 students')

ALL_METHODS = ('fp', 'ptq_rtn', 'qail', 'qail_qbc')
#: engines of the FP model evaluated closed loop when asked (--methods fp,openvino_int8):
#: openvino_int8 = NNCF INT8 calibrated on 100 camera frames of the FP policy driving the
#: training town (seeds 5000+, as models/cilrs-highway's W8A8), run by EnginePolicy
ENGINE_METHODS = ('openvino_int8',)
LABELS = {'fp': 'FP32', 'ptq_rtn': 'PTQ-RTN', 'qail': 'QAIL', 'qail_qbc': 'QAIL+QBC',
          'openvino_int8': 'OpenVINO INT8 (NNCF)'}
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


def add_arguments(parser):
    parser.add_argument('--quick', action='store_true',
                        help='smoke test: tiny data, a few steps, 2 routes, one seed (~1 min)')
    parser.add_argument('--seeds', type=int, default=None, help='training seeds (3)')
    parser.add_argument('--first-seed', type=int, default=0,
                        help='first training seed (seeds first..first+N-1; to add seeds later)')
    parser.add_argument('--routes', type=int, default=None,
                        help='evaluation routes per density (20; seeds 0..N-1)')
    parser.add_argument('--town', action='append', default=None,
                        help='evaluation town(s): highway, merge, roundabout (default merge)')
    parser.add_argument('--densities', action='append', default=None,
                        help='evaluation densities (default empty,regular,dense; --quick: '
                             'regular)')
    parser.add_argument('--methods', action='append', default=None,
                        help=f'methods among {",".join(ALL_METHODS)} (default all)')
    parser.add_argument('--bits', action='append', default=None,
                        help='bit widths, e.g. w4a4 (default) or w4a4,w8a8; the first is the '
                             'main one')
    parser.add_argument('--steps', type=int, default=None, help='QAIL training steps (400)')
    parser.add_argument('--bc-steps', type=int, default=None,
                        help='FP behaviour-cloning steps (2000)')
    parser.add_argument('--demo-episodes', type=int, default=None,
                        help='clean expert routes per training density (16)')
    parser.add_argument('--onpolicy-every', type=int, default=None,
                        help='on-policy QBC rollout interval in steps (100; 0 = off)')
    parser.add_argument('--retrain', action='store_true',
                        help='train the FP model even if OUT/cilrs_fp.safetensors matches')
    parser.add_argument('--out', default='bench-results/driving',
                        help='output directory (driving.json, driving.md, the FP model)')
    parser.add_argument('--threads', type=int, default=1, help='torch threads (default 1)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bars')


def settings_from(args) -> dict[str, Any]:
    s = dict(QUICK if args.quick else FULL)
    for key in ('seeds', 'routes', 'steps', 'bc_steps', 'demo_episodes', 'onpolicy_every'):
        v = getattr(args, key, None)
        if v is not None:
            s[key] = v
    s['first_seed'] = getattr(args, 'first_seed', 0) or 0
    s['towns'] = csv_list(args.town) or ['merge']
    s['densities'] = csv_list(args.densities) or (['regular'] if args.quick
                                                  else ['empty', 'regular', 'dense'])
    s['bits'] = [b.lower() for b in csv_list(args.bits)] or ['w4a4']
    s['methods'] = csv_list(args.methods) or list(ALL_METHODS)
    return s


def _validate(s: dict[str, Any]) -> None:
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


def _commit() -> str:
    from qail_ros.bench.physics import _commit as commit
    return commit()


def collect_demos(s: dict[str, Any], log) -> dict[str, Any]:
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
    log(f'D_E: {len(demos["speed"])} samples from {len(parts)} collections '
        f'(commands {dict(zip(*np.unique(demos["command"], return_counts=True)))})')
    return demos


def fp_model(s: dict[str, Any], out: Path, demos: dict[str, Any], retrain: bool, progress: bool,
             log) -> tuple[Any, dict[str, Any]]:
    """The FP CILRS: loaded from OUT when trained with the same settings, else trained."""
    from qail_ros.cilrs.model import load_checkpoint, save_checkpoint
    from qail_ros.cilrs.train import small_config, train_bc
    path, meta_path = out / 'cilrs_fp.safetensors', out / 'cilrs_fp.json'
    want = {k: s[k] for k in BC_KEYS}
    if not retrain and path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get('settings') == want:
            log(f'FP CILRS: cached {path}')
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
    log(f'FP CILRS: trained in {meta["seconds"]:.0f}s -> {path}')
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


def _aggregate(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
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


def run(s: dict[str, Any], out: Path, retrain: bool, progress: bool, log) -> dict[str, Any]:
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
    demos = collect_demos(s, log)
    demo_s = time.perf_counter() - t0
    model, meta = fp_model(s, out, demos, retrain, progress, log)
    macs = count_macs(model.config)
    teacher = PackedCILRS(model.fused()).eval()
    results: dict[str, Any] = {}
    training: dict[str, list[dict[str, Any]]] = {}
    t0 = time.perf_counter()
    fp_eval = evaluate_policy(CILRSPolicy(model), s)
    log(f'fp: {_brief(fp_eval)} ({time.perf_counter() - t0:.0f}s)')
    results['fp'] = {'method': 'fp', 'bits': 'fp32', 'seeds': 1, 'metrics': _aggregate([fp_eval])}
    if 'openvino_int8' in s['methods']:
        t0 = time.perf_counter()
        ev = evaluate_policy(openvino_int8_policy(model, out, s), s)
        log(f'openvino_int8: {_brief(ev)} ({time.perf_counter() - t0:.0f}s)')
        results['openvino_int8'] = {'method': 'openvino_int8', 'bits': 'w8a8', 'seeds': 1,
                                    'metrics': _aggregate([ev])}
    runs: dict[str, tuple[str, str, list[dict[str, Any]]]] = {}
    size = (s['width'], s['height'])
    quantized = [m for m in s['methods'] if m not in ('fp',) + ENGINE_METHODS]
    first = s.get('first_seed', 0)
    for seed in range(first, first + s['seeds']) if quantized else ():
        t0 = time.perf_counter()
        data = build_driving_data(teacher, demos=demos, densities=s['fp_densities'],
                                  fp_episodes=s['fp_episodes'], seed=seed, image_size=size,
                                  view_m=s['view_m'])
        log(f'seed {seed}: D_QAIL {data.counts()} ({time.perf_counter() - t0:.0f}s)')
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
                log(f'seed {seed} {bits} {method}: {_brief(ev)} (train {res.seconds:.0f}s, '
                    f'gap {gap:.4f}, eval {time.perf_counter() - t1:.0f}s)')
    for key, (method, bits, per_seed) in runs.items():
        results[key] = {'method': method, 'bits': bits, 'seeds': len(per_seed),
                        'metrics': _aggregate(per_seed), 'training': training[key]}
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
    from qail_ros.driving.ship import CALIB_SEED, calibration_frames
    calib = calibration_frames(model, n=100, view_m=s['view_m'])
    details = {'camera': {'width': s['width'], 'height': s['height'], 'view_m': s['view_m']}}
    paths = build_engines(out / 'cilrs_fp.safetensors', out / 'engines', ['w8a8_openvino'],
                          calibration=calib, name='cilrs_fp', details=details,
                          calibration_note=f'{len(calib)} camera frames of the FP policy on '
                                           f'highway (seeds {CALIB_SEED}+)')
    return EnginePolicy(paths['w8a8_openvino'])


def _brief(ev: dict[str, Any]) -> str:
    return ', '.join(f'{t}/{d} S{m["success_rate"]:.2f} C{m["collision_rate"]:.2f} '
                     f'RC{m["route_completion"]:.2f}' for t, c in ev.items() for d, m in c.items())


def rows(result: dict[str, Any]) -> list[list[Any]]:
    out = []
    for key, e in result['results'].items():
        for town, cells in e['metrics'].items():
            for density, m in cells.items():
                out.append([town, density, LABELS.get(e['method'], e['method']), e['bits'],
                            e['seeds'], f'{m["success_rate"]:.3f}', f'{m["collision_rate"]:.3f}',
                            f'{m["route_completion"]:.3f}'])
    return out


def markdown(result: dict[str, Any]) -> str:
    s, mdl = result['settings'], result['model']
    lines = ['# Driving benchmark: closed-loop CILRS, FP vs PTQ-RTN vs QAIL vs QAIL+QBC', '',
             f'Command: `{result["command"]}` (commit {result["commit"]}, {result["date"]}, '
             f'{result["seconds"]:.0f} s).', '',
             f'Success rate / collision rate / route completion over {s["routes"]} routes '
             '(seeds 0..N-1) per cell; quantized methods: mean over '
             f'{s["seeds"]} training seed(s) (± std of the seed means of the success rate).',
             '', '| town | density | method | bits | success | collision | route compl. |',
             '|---|---|---|---|---|---|---|']
    for key, e in result['results'].items():
        for town, cells in e['metrics'].items():
            for density, m in cells.items():
                sd = (f' ± {m["success_rate_seed_std"]:.3f}' if e['seeds'] > 1 else '')
                lines.append(f'| {town} | {density} | {LABELS.get(e["method"], e["method"])} | '
                             f'{e["bits"]} | {m["success_rate"]:.3f}{sd} | '
                             f'{m["collision_rate"]:.3f} | {m["route_completion"]:.3f} |')
    lines += ['', '## Per seed (one value per training seed)', '',
              '| method | cell | per-seed success | per-seed collision | per-seed route compl. |',
              '|---|---|---|---|---|']
    for key, e in result['results'].items():
        for town, cells in e['metrics'].items():
            for density, m in cells.items():
                ps = m['per_seed']
                lines.append(f'| {key} | {town}/{density} | '
                             + ' | '.join(', '.join(f'{v:.2f}' for v in ps[k]) for k in METRICS)
                             + ' |')
    lines += ['', '## Training', '', '| method | seed | train s | eval s | on-policy states | '
              'output gap to FP | quantized layers | skipped |', '|' + '---|' * 8]
    for key, e in result['results'].items():
        for t in e.get('training', []):
            lines.append(f'| {key} | {t["seed"]} | {t["train_seconds"]} | {t["eval_seconds"]} | '
                         f'{t["onpolicy_states"]} | {t["output_gap"]} | {t["quantized_layers"]} '
                         f'| {", ".join(t["skipped_layers"]) or "-"} |')
    c = mdl['config']
    lines += ['', '## Model and settings', '',
              f'CILRS ResNet-{c["resnet"]}, base width {c["base_width"]}, image '
              f'{c["width"]}x{c["height"]}, deterministic head: {mdl["macs"] / 1e6:.1f} MMACs '
              f'({mdl["gflops"]:.3f} GFLOPs) per frame, {mdl["params"]} parameters (the CILRS '
              f'paper\'s network: ~{mdl["paper_gflops"]} GFLOPs). FP behaviour cloning on '
              f'{mdl["bc_samples"]} expert samples: {mdl["bc_seconds"]} s'
              f'{" (cached model)" if mdl["bc_cached"] else ""}.', '',
              f'Settings: `{json.dumps(s)}`', '']
    return '\n'.join(lines)


def write_outputs(result: dict[str, Any], out: Path) -> dict[str, str]:
    return write_results(out, 'driving', result, markdown(result))


def main(args) -> int:
    import torch

    from qail_ros.bench.report import emit_json, environment, table

    torch.set_num_threads(max(1, args.threads))
    s = settings_from(args)
    _validate(s)
    out = Path(args.out)
    command = 'qail-ros bench driving ' + ' '.join(shlex.quote(a) for a in sys.argv[3:]) if (
        sys.argv[1:3] == ['bench', 'driving']) else 'qail-ros ' + ' '.join(
        shlex.quote(a) for a in sys.argv[1:])
    log = (lambda msg: print(msg, file=sys.stderr, flush=True))
    from qail_ros.training.logs import show_progress
    show_progress()             # the CILRS behaviour cloning reports to its logger
    result: dict[str, Any] = {'benchmark': 'driving', 'command': command, 'commit': _commit(),
                              'date': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
                              'settings': s}
    result.update(run(s, out, args.retrain, not args.no_progress, log))
    result['environment'] = environment()
    result['files'] = write_outputs(result, out)
    table('driving benchmark (closed loop)', ['town', 'density', 'method', 'bits', 'seeds',
                                              'success', 'collision', 'route compl.'],
          rows(result))
    if args.json:
        emit_json(result)
    return 0
