"""`qail-ros bench driving`: closed-loop CILRS driving, FP vs PTQ-RTN vs QAIL vs QAIL+QBC.

The driving counterpart of `bench physics` (issue #5 item 5); the pipeline is
qail_ros.driving.benchmark, this module parses, calls and writes the tables. One run:

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

from qail_ros.driving.benchmark import ALL_METHODS, FULL, METRICS, QUICK, run, validate
from qail_ros.report import csv_list, git_commit, write_results

HELP = ('closed-loop CILRS driving (highway-env): FP vs PTQ-RTN vs QAIL vs QAIL+QBC success, '
        'collision and route completion of W4A4 students')

LABELS = {'fp': 'FP32', 'ptq_rtn': 'PTQ-RTN', 'qail': 'QAIL', 'qail_qbc': 'QAIL+QBC',
          'openvino_int8': 'OpenVINO INT8 (NNCF)'}


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

    from qail_ros.report import emit_json, environment, table

    torch.set_num_threads(max(1, args.threads))
    s = settings_from(args)
    validate(s)
    out = Path(args.out)
    command = 'qail-ros bench driving ' + ' '.join(shlex.quote(a) for a in sys.argv[3:]) if (
        sys.argv[1:3] == ['bench', 'driving']) else 'qail-ros ' + ' '.join(
        shlex.quote(a) for a in sys.argv[1:])
    from qail_ros.training.logs import show_progress
    show_progress()             # the pipeline and the trainers report to their loggers
    result: dict[str, Any] = {'benchmark': 'driving', 'command': command, 'commit': git_commit(),
                              'date': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
                              'settings': s}
    result.update(run(s, out, args.retrain, not args.no_progress))
    result['environment'] = environment()
    result['files'] = write_outputs(result, out)
    table('driving benchmark (closed loop)', ['town', 'density', 'method', 'bits', 'seeds',
                                              'success', 'collision', 'route compl.'],
          rows(result))
    if args.json:
        emit_json(result)
    return 0
