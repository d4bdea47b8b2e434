"""`qail-ros bench manipulation`: the OpenVLA result in small: FP vs AWQ-INT4 vs QLoRA QAIL vs
QLoRA QAIL+QBC success on language-conditioned table-top tasks (qail_ros.manipulation).

This module parses the options, calls the pipeline (`qail_ros.manipulation.benchmark.run`) and
prints / writes the tables. The pipeline, each step measured in the same run:
1. D_E: the scripted expert on training seeds (clean episodes + DART-noised ones, clean labels).
2. FP: a small OpenVLA-architecture VLA trained by behaviour cloning on D_E (cached in --out as
   an OpenVLA checkpoint directory; reused when its settings match, unless --retrain).
3. D_FP: the FP policy's rollouts on other training seeds, labelled with its own actions.
   D_QAIL = D_E + D_FP.
4. INT4 students: the Llama backbone per-channel INT4 weight-only, AWQ-initialised (and RTN as a
   reference); QAIL = QLoRA adapters trained with L_QAIL on D_QAIL; QAIL+QBC adds lambda * L_QBC
   on D_QAIL states and the student's own rollouts labelled by the FP teacher.
5. Every policy is evaluated closed loop on the same held-out seeds (default 50 per task),
   INT4 students on torch's packed int4 kernel with their float adapters.

--bits 3 / --bits 2 make every student INT3 / INT2 instead (same methods, same kernel: the
narrower codes are a subset of its 4-bit range); the method keys stay `*_int4` for stable JSON,
the table labels say INT3 / INT2, and --write names the files manipulation_int3.md / .json.

Every method's JSON keeps its per-episode outcomes (`outcomes`, 0/1 in evaluation-seed order,
per task and seed); since all methods run on the same episodes, the bench adds paired
comparisons (McNemar's exact test: QAIL+QBC vs RTN / AWQ / QAIL, FP vs every student).
--reuse-students loads OUT/{method}_seed{k}_adapters.safetensors onto the freshly quantized
student instead of training it (evaluate more episodes without retraining; the settings the
adapters were trained with must match, else it refuses).

    qail-ros bench manipulation                       # full run (~1 h on one core)
    qail-ros bench manipulation --quick --json        # smoke test (~1 min)
    qail-ros bench manipulation --write docs/results  # also manipulation.md / .json there
    qail-ros bench manipulation --bits 3 --out bench-results/manip-int3   # INT3 students
    qail-ros bench manipulation --bits 2 --seeds 2 --episodes 200 --reuse-students \
        --out bench-results/manip-int2        # re-evaluate the saved INT2 students
"""
from __future__ import annotations

import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from qail_ros.bench.args import add_run_arguments, choose
from qail_ros.report import csv_list, git_commit, write_results
from qail_ros.errors import ParameterError
from qail_ros.manipulation.benchmark import (ALL_METHODS, BITS, paired_comparisons,
                                             results_name, run, summarize)

HELP = ('table-top manipulation with a small VLA: FP vs AWQ-INT4 vs QLoRA QAIL vs QAIL+QBC '
        'success (MuJoCo, >= 50 episodes per task)')

LABELS = {'fp': 'FP32', 'rtn_int4': 'RTN INT4', 'awq_int4': 'AWQ INT4',
          'qail_int4': 'QAIL INT4 (QLoRA)', 'qail_qbc_int4': 'QAIL+QBC INT4 (QLoRA)'}
FULL = {'tasks': ['lift', 'place'], 'demo_episodes': 300, 'noisy_episodes': 300,
        'dart_noise': 0.3, 'fp_episodes': 100, 'bc_steps': 12000, 'bc_lr': 1e-3,
        'dagger_rounds': 0, 'dagger_episodes': 100,
        'qlora_steps': 1200, 'qlora_lr': 5e-4, 'rank': 8, 'onpolicy_rounds': 2,
        'onpolicy_episodes': 40, 'eval_episodes': 50, 'seeds': 1, 'batch': 32,
        'llm_hidden': 128, 'llm_layers': 3, 'bits': 4, 'group_size': 0}
QUICK = dict(FULL, demo_episodes=4, noisy_episodes=2, fp_episodes=2, bc_steps=10,
             dagger_rounds=1, dagger_episodes=2,
             qlora_steps=4, onpolicy_rounds=1, onpolicy_episodes=2, eval_episodes=3, batch=8,
             llm_hidden=64, llm_layers=2)


def add_arguments(parser):
    add_run_arguments(parser, name='manipulation',
                      quick='tiny model and data, a few steps, 3 episodes (~1 min)',
                      seeds='training seeds of the QLoRA students (1)',
                      episodes='evaluation episodes per task and method (50)',
                      out='output directory (FP checkpoint, students, results)')
    parser.add_argument('--tasks', action='append', default=None,
                        help='tasks among lift,place (default both)')
    parser.add_argument('--methods', action='append', default=None,
                        help=f'methods among {",".join(ALL_METHODS)} (default all)')
    parser.add_argument('--bc-steps', type=int, default=None, help='FP BC steps (12000)')
    parser.add_argument('--qlora-steps', type=int, default=None, help='QLoRA steps (1200)')
    parser.add_argument('--dagger-rounds', type=int, default=None,
                        help='DAgger rounds while the FP trains (default 0 = plain BC; '
                             'measured: 4 rounds hurt)')
    parser.add_argument('--bits', type=int, choices=BITS, default=None,
                        help='weight bits of the RTN / AWQ / QAIL students (default 4; 3 and 2 '
                             'are the harsher settings where PTQ loses accuracy)')
    parser.add_argument('--group-size', type=int, default=None,
                        help='quantization group of input channels (default 0 = one scale per '
                             'output channel; e.g. 32 to soften INT2)')
    parser.add_argument('--rank', type=int, default=None,
                        help='LoRA rank (8 for this 128-wide backbone; the paper: 32 at 4096)')
    parser.add_argument('--retrain', action='store_true',
                        help='train the FP VLA even if OUT/fp matches the settings')
    parser.add_argument('--reuse-students', action='store_true',
                        help='load the QLoRA adapters saved in OUT '
                             '({method}_seed{k}_adapters.safetensors) instead of training '
                             'them (needs the cached FP and the same settings)')
    parser.add_argument('--write', default=None,
                        help='also write manipulation.md / .json into this directory '
                             '(e.g. docs/results)')


def settings_from(args) -> dict[str, Any]:
    s = dict(QUICK if args.quick else FULL)
    for key, arg in (('eval_episodes', 'episodes'), ('seeds', 'seeds'),
                     ('bc_steps', 'bc_steps'), ('qlora_steps', 'qlora_steps'),
                     ('rank', 'rank'), ('dagger_rounds', 'dagger_rounds'),
                     ('bits', 'bits'), ('group_size', 'group_size')):
        v = getattr(args, arg, None)
        if v is not None:
            s[key] = v
    from qail_ros.manipulation.tasks import TASKS
    tasks = choose('--tasks', csv_list(args.tasks), TASKS, s['tasks'])
    methods = choose('--methods', csv_list(args.methods), ALL_METHODS, ALL_METHODS)
    if s['eval_episodes'] < 1 or s['seeds'] < 1:
        raise ParameterError('--episodes and --seeds must be >= 1')
    if s['bits'] not in BITS:
        raise ParameterError(f'--bits {s["bits"]}: choose among {",".join(map(str, BITS))}')
    g = s['group_size']
    if g < 0 or (g and s['llm_hidden'] % g):
        raise ParameterError(f'--group-size {g}: use 0 (per output channel) or a divisor of '
                             f'the {s["llm_hidden"]}-wide backbone, e.g. 32')
    s['tasks'], s['methods'] = tasks, methods
    return s


def label(method: str, bits: int = 4) -> str:
    """The table label of a method at a weight width: 'RTN INT3' for rtn_int4 at 3 bits."""
    return LABELS[method].replace('INT4', f'INT{bits}')


def paired_label(r: dict[str, Any], bits: int) -> str:
    seed = {None: '', 'pooled': ' (pooled seeds)'}.get(r['seed'], f' (seed {r["seed"]})')
    return f'{label(r["a"], bits)} vs {label(r["b"], bits)}{seed}'


def markdown(result: dict[str, Any]) -> str:
    s = result['settings']
    bits = s.get('bits', 4)
    gran = (f'groups of {s["group_size"]} input channels' if s.get('group_size')
            else 'per output channel')
    lines = [f'# Manipulation benchmark: small VLA, INT{bits} weight-only backbone', '',
             f'Command: `{result["command"]}`  ', f'Commit: `{result["commit"]}`  ',
             f'Date: {result["date"]}; {result["elapsed_s"] / 60:.0f} min on this machine '
             '(2 x86 cores, no GPU, shared with other jobs; an FP checkpoint reused from '
             '--out does not count).', '',
             'Tasks (qail_ros.manipulation, MuJoCo 3.17 physics, 48x48 eye-in-hand camera '
             'drawn on CPU): `lift` ("pick up the {color} block") and `place` ("put the '
             '{color} block on the {plate} plate"), three blocks and two plates at random '
             f'places. Evaluation: {s["eval_episodes"]} held-out episodes per task and method, '
             'the same seeds for every method.', '',
             '| method | ' + ' | '.join(s['tasks']) + ' | mean |',
             '|---|' + '---|' * (len(s['tasks']) + 1)]
    by = {}
    for r in summarize(result):
        by.setdefault(r['method'], {})[r['task']] = r
    for method, per_task in by.items():
        cells = []
        for task in s['tasks']:
            r = per_task[task]
            cell = f'{100 * r["success"]:.0f} %'
            if 'se' in r:
                cell = f'{100 * r["success"]:.1f} ± {100 * r["se"]:.1f} %'
            if r['seeds'] > 1:
                cell += ' (' + ' / '.join(f'{100 * v:.0f}' for v in r['per_seed']) + ')'
            cells.append(cell)
        mean = sum(per_task[t]['success'] for t in s['tasks']) / len(s['tasks'])
        se = ''
        if all('se' in per_task[t] for t in s['tasks']):
            se = math.sqrt(sum(per_task[t]['se'] ** 2 for t in s['tasks'])) / len(s['tasks'])
            se = f' ± {100 * se:.1f}'
        lines.append(f'| {label(method, bits)} | ' + ' | '.join(cells)
                     + f' | {100 * mean:.1f}{se} % |')
    if any('se' in r for r in summarize(result)):
        lines += ['', '± : binomial standard error over all episodes of the cell (student '
                  'seeds counted as independent episodes, so a lower bound for them).']
    paired = result.get('paired') or []
    if paired:
        lines += ['', '## Paired comparisons', '',
                  'McNemar\'s exact test on per-episode outcomes over all tasks (every method '
                  'runs on the same evaluation episodes). "A only" / "B only": episodes only '
                  'A / only B succeeded on. Pooled seeds: the per-seed pairs together (pairs '
                  'sharing a one-seed method\'s episode are not independent: optimistic).', '',
                  '| A vs B | episodes | A | B | A - B | A only | B only | p |',
                  '|---|---|---|---|---|---|---|---|']
        for r in paired:
            lines.append(f'| {paired_label(r, bits)} | {r["episodes"]} | '
                         f'{100 * r["a_success"]:.1f} % | {100 * r["b_success"]:.1f} % | '
                         f'{100 * r["diff"]:+.1f} pt | {r["a_only"]} | {r["b_only"]} | '
                         f'{r["p"]:.3g} |')
    fp_info = result.get('fp_training', {})
    d = result.get('data', {})
    lines += ['', '## Setup', '',
              f'- Expert success (clean / DART-noised demonstrations): '
              f'{result.get("expert_success")}.',
              f'- FP VLA: {fp_info.get("parameters", 0) / 1e6:.2f} M parameters (two ViT towers '
              f'+ projector + a {s["llm_layers"]}-layer {s["llm_hidden"]}-wide Llama), '
              f'{s["bc_steps"]} BC steps (lr {s["bc_lr"]}, batch {s["batch"]}, auxiliary '
              f'state heads), {s["dagger_rounds"]} DAgger rounds of {s["dagger_episodes"]} '
              'episodes per task (the policy acts, the expert labels), final loss '
              f'{fp_info.get("final_loss", 0):.3f}; policy success during training: '
              f'{fp_info.get("progress")}.',
              f'- Data: D_E {d.get("d_e")} samples, D_FP {d.get("d_fp")}, D_QAIL '
              f'{d.get("d_qail")}.',
              f'- INT{bits}: the Llama linear layers {gran}, asymmetric (zero point), AWQ '
              '(or RTN) initialised, lm_head and vision towers float; inference on torch\'s '
              'packed int4 CPU kernel'
              + ('.' if bits == 4 else f' ({bits}-bit codes are a subset of its 4-bit range: '
                 'the kernel computes the same weights as the fake-quant training forward).'),
              f'- QLoRA: rank {s["rank"]} adapters on every Llama linear layer, lr '
              f'{s["qlora_lr"]}, {s["qlora_steps"]} steps, batch {s["batch"]}; QBC: lambda 1, '
              f'{s["onpolicy_rounds"]} on-policy rounds of {s["onpolicy_episodes"]} student '
              'episodes per task, labelled by the FP teacher.', '']
    return '\n'.join(lines) + '\n'


def write_outputs(result: dict[str, Any], directory: Path) -> dict[str, str]:
    return write_results(directory, results_name(result['settings']), result,
                         markdown(result))


def main(args) -> int:
    import torch

    from qail_ros.report import emit_json, environment, table
    from qail_ros.training.logs import show_progress
    torch.set_num_threads(max(1, args.threads))
    s = settings_from(args)
    out = Path(args.out)
    argv = sys.argv[3:] if sys.argv[1:3] == ['bench', 'manipulation'] else sys.argv[1:]
    command = 'qail-ros bench manipulation ' + ' '.join(shlex.quote(a) for a in argv)
    show_progress()
    t0 = time.perf_counter()
    result: dict[str, Any] = {'benchmark': 'manipulation', 'command': command.strip(),
                              'commit': git_commit(),
                              'date': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
                              'settings': s}
    result.update(run(s, out, args.retrain,
                      reuse_students=getattr(args, 'reuse_students', False)))
    result['elapsed_s'] = time.perf_counter() - t0
    result['environment'] = environment()
    result['summary'] = summarize(result)
    result['paired'] = paired_comparisons(result)
    files = write_outputs(result, out)
    if args.write:
        files = write_outputs(result, Path(args.write))
    result['files'] = files
    table('manipulation benchmark (closed loop, success rate)',
          ['method', 'task', 'seeds', 'episodes', 'success', 'SE', 'vs FP'],
          [[label(r['method'], s['bits']), r['task'], r['seeds'], r['episodes'], r['success'],
            r['se'], '' if r['vs_fp'] is None else f'{100 * r["vs_fp"]:+.0f} pt'] for r in
           result['summary']])
    if result['paired']:
        table('paired comparisons (McNemar exact test over all tasks\' episodes)',
              ['A vs B', 'episodes', 'A', 'B', 'A only', 'B only', 'p'],
              [[paired_label(r, s['bits']), r['episodes'], r['a_success'], r['b_success'],
                r['a_only'], r['b_only'], f'{r["p"]:.2g}'] for r in result['paired']])
    if args.json:
        emit_json({'benchmark': 'manipulation', 'summary': result['summary'],
                   'paired': result['paired'], 'settings': s, 'commit': result['commit'],
                   'files': files})
    return 0
