"""`qail-ros bench manipulation`: the OpenVLA result in small: FP vs AWQ-INT4 vs QLoRA QAIL vs
QLoRA QAIL+QBC success on language-conditioned table-top tasks (qail_ros.manipulation).

Pipeline, each step measured in the same run:
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

    qail-ros bench manipulation                       # full run (~1 h on one core)
    qail-ros bench manipulation --quick --json        # smoke test (~1 min)
    qail-ros bench manipulation --write docs/results  # also manipulation.md / .json there
    qail-ros bench manipulation --bits 3 --out bench-results/manip-int3   # INT3 students
"""
from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from qail_ros.bench.report import csv_list, write_results
from qail_ros.errors import ParameterError

HELP = ('table-top manipulation with a small VLA: FP vs AWQ-INT4 vs QLoRA QAIL vs QAIL+QBC '
        'success (MuJoCo, >= 50 episodes per task)')

ALL_METHODS = ('fp', 'rtn_int4', 'awq_int4', 'qail_int4', 'qail_qbc_int4')
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
#: settings that determine the FP model (its cache key)
FP_KEYS = ('tasks', 'demo_episodes', 'noisy_episodes', 'dart_noise', 'bc_steps', 'bc_lr',
           'batch', 'llm_hidden', 'llm_layers', 'dagger_rounds', 'dagger_episodes')
EVAL_SEED0 = 100_000          # evaluation seeds: never used for training
BITS = (2, 3, 4)              # student weight widths (all run on the int4 kernel)
DAGGER_SEED0 = 200_000        # the FP policy's DAgger rollouts
FP_SEED0 = 20_000             # D_FP rollout seeds


def add_arguments(parser):
    parser.add_argument('--quick', action='store_true',
                        help='smoke test: tiny model and data, a few steps, 3 episodes (~1 min)')
    parser.add_argument('--tasks', action='append', default=None,
                        help='tasks among lift,place (default both)')
    parser.add_argument('--methods', action='append', default=None,
                        help=f'methods among {",".join(ALL_METHODS)} (default all)')
    parser.add_argument('--episodes', type=int, default=None,
                        help='evaluation episodes per task and method (50)')
    parser.add_argument('--seeds', type=int, default=None,
                        help='training seeds of the QLoRA students (1)')
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
    parser.add_argument('--out', default='bench-results/manipulation',
                        help='output directory (FP checkpoint, students, results)')
    parser.add_argument('--write', default=None,
                        help='also write manipulation.md / .json into this directory '
                             '(e.g. docs/results)')
    parser.add_argument('--threads', type=int, default=1, help='torch threads (default 1)')


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
    tasks = csv_list(args.tasks) or s['tasks']
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        raise ParameterError(f'--tasks {bad}: choose among {",".join(TASKS)}')
    methods = csv_list(args.methods) or list(ALL_METHODS)
    bad = [m for m in methods if m not in ALL_METHODS]
    if bad:
        raise ParameterError(f'--methods {bad}: choose among {",".join(ALL_METHODS)}')
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


def results_name(s: dict[str, Any]) -> str:
    """File stem for --write: manipulation (INT4, the committed table) or manipulation_int3."""
    return 'manipulation' if s.get('bits', 4) == 4 else f'manipulation_int{s["bits"]}'


def quant_kwargs(s: dict[str, Any]) -> dict[str, Any]:
    """quantize_awq's width and granularity for these settings."""
    g = s.get('group_size', 0)
    return {'bits': s.get('bits', 4), 'granularity': 'group' if g else 'per_channel',
            'group_size': g or 128}


def _commit() -> str:
    from qail_ros.bench.physics import _commit as commit
    return commit()


def collect_demos(s: dict[str, Any], log):
    from qail_ros.manipulation.vla import Samples, rollouts
    parts, rates = [], {}
    for k, task in enumerate(s['tasks']):
        base = 1000 * k
        clean, r1 = rollouts(task, list(range(base, base + s['demo_episodes'])), None,
                             label='expert')
        n0 = base + s['demo_episodes']
        noisy, r2 = rollouts(task, list(range(n0, n0 + s['noisy_episodes'])), None,
                             label='expert', noise=s['dart_noise'], rng_seed=k)
        parts += [clean, noisy]
        rates[task] = {'clean': _rate(r1), 'noisy': _rate(r2)}
    data = Samples.concat(parts)
    log(f'D_E: {len(data)} samples; expert success {rates}')
    return data, rates


def _rate(results) -> float:
    return float(sum(r['success'] for r in results) / max(len(results), 1))


def fp_model(s: dict[str, Any], out: Path, demos, retrain: bool, log):
    """The FP VLA: reused from OUT/fp when trained with the same settings."""
    from qail_ros.manipulation.vla import SmallVLA, bc_train, stats_from
    key = {k: s[k] for k in FP_KEYS}
    meta = out / 'fp' / 'qail_ros_training.json'
    if not retrain and meta.is_file():
        old = json.loads(meta.read_text())
        if old.get('settings') == key:
            log(f'FP VLA: reusing {out / "fp"} (same settings; --retrain to train again)')
            return SmallVLA.load(out / 'fp'), old
    vla = SmallVLA.create(0, stats=stats_from(demos.actions), llm_hidden=s['llm_hidden'],
                          llm_layers=s['llm_layers'])
    t0 = time.perf_counter()
    progress = []

    def dagger(step: int):
        """The policy's own rollouts, labelled by the expert: their success is the training
        progress; with dagger_rounds > 0 they join the data (DAgger)."""
        from qail_ros.manipulation.vla import Samples, rollouts
        got, rates = [], {}
        for k, task in enumerate(s['tasks']):
            seeds = [DAGGER_SEED0 + 100_000 * k + 1000 * step + i
                     for i in range(s['dagger_episodes'])]
            samples, res = rollouts(task, seeds, vla.act, label='expert')
            got.append(samples)
            rates[task] = _rate(res)
        progress.append({'step': step, **rates})
        log(f'FP BC step {step}: policy success {rates} on {s["dagger_episodes"]} rollouts '
            'per task')
        return Samples.concat(got) if s['dagger_rounds'] else None

    checks = s['dagger_rounds'] or 4
    losses = bc_train(vla, demos, steps=s['bc_steps'], batch=s['batch'], lr=s['bc_lr'],
                      log=log, every=(max(s['bc_steps'] // (checks + 1), 1), dagger))
    info = {'settings': key, 'seconds': time.perf_counter() - t0,
            'final_loss': float(sum(losses[-100:]) / len(losses[-100:])),
            'parameters': sum(p.numel() for p in vla.model.parameters()),
            'progress': progress}
    vla.save(out / 'fp')
    meta.write_text(json.dumps(info, indent=1) + '\n')
    return vla, info


def evaluate_all(policy, s: dict[str, Any], log, name: str) -> dict[str, Any]:
    from qail_ros.manipulation.vla import evaluate
    res = {}
    for k, task in enumerate(s['tasks']):
        seeds = [EVAL_SEED0 + 10_000 * k + i for i in range(s['eval_episodes'])]
        res[task] = evaluate(policy, task, seeds)
        log(f'{name} {task}: success {res[task]["success"]:.3f} '
            f'({res[task]["successes"]}/{res[task]["episodes"]}), '
            f'{res[task]["seconds"]:.0f} s')
    return res


def run(s: dict[str, Any], out: Path, retrain: bool, log) -> dict[str, Any]:
    import torch

    from qail_ros.manipulation.qail_vla import deploy, quantize_awq, train_qlora
    from qail_ros.manipulation.vla import Samples, rollouts
    from qail_ros.quant.lora import save_lora
    out.mkdir(parents=True, exist_ok=True)
    demos, expert_rates = collect_demos(s, log)
    fp, fp_info = fp_model(s, out, demos, retrain, log)
    fp.model.eval()
    results: dict[str, Any] = {'expert_success': expert_rates, 'fp_training': fp_info,
                               'methods': {}}
    results['methods']['fp'] = {'seeds': [evaluate_all(fp.act, s, log, 'FP')]}
    parts = []
    for k, task in enumerate(s['tasks']):
        seeds = [FP_SEED0 + 1000 * k + i for i in range(s['fp_episodes'])]
        d_fp, res = rollouts(task, seeds, fp.act)
        parts.append(d_fp)
        log(f'D_FP {task}: {len(d_fp)} samples, FP success on them {_rate(res):.2f}')
    d_qail = Samples.concat([demos] + parts)
    results['data'] = {'d_e': len(demos), 'd_fp': len(d_qail) - len(demos),
                       'd_qail': len(d_qail)}
    for method in s['methods']:
        if method == 'fp':
            continue
        per_seed, training = [], []
        seeds = range(s['seeds']) if method.startswith('qail') else range(1)
        for seed in seeds:
            torch.manual_seed(seed)
            student = quantize_awq(fp, d_qail, scheme='rtn' if method == 'rtn_int4' else 'awq',
                                   **quant_kwargs(s))
            if method.startswith('qail'):
                info = train_qlora(
                    student, fp, d_qail, steps=s['qlora_steps'], lr=s['qlora_lr'],
                    rank=s['rank'], batch=s['batch'], seed=seed,
                    qbc_lambda=1.0 if method == 'qail_qbc_int4' else 0.0, tasks=s['tasks'],
                    onpolicy_rounds=s['onpolicy_rounds'],
                    onpolicy_episodes=s['onpolicy_episodes'], log=log)
                training.append(info)
                save_lora(student.model.language_model,
                          out / f'{method}_seed{seed}_adapters.safetensors')
            deploy(student)
            per_seed.append(evaluate_all(student.act, s, log, f'{method} seed {seed}'))
        results['methods'][method] = {'seeds': per_seed, 'training': training}
    return results


def summarize(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    fp = result['methods'].get('fp')
    for method in ALL_METHODS:
        m = result['methods'].get(method)
        if not m:
            continue
        for task in result['settings']['tasks']:
            vals = [seed[task]['success'] for seed in m['seeds']]
            n = sum(seed[task]['episodes'] for seed in m['seeds'])
            mean = sum(vals) / len(vals)
            fp_rate = fp['seeds'][0][task]['success'] if fp else None
            rows.append({'method': method, 'task': task, 'seeds': len(vals),
                         'episodes': n, 'success': mean, 'per_seed': vals,
                         'vs_fp': None if fp_rate is None else mean - fp_rate})
    return rows


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
            if r['seeds'] > 1:
                cell += ' (' + ' / '.join(f'{100 * v:.0f}' for v in r['per_seed']) + ')'
            cells.append(cell)
        mean = sum(per_task[t]['success'] for t in s['tasks']) / len(s['tasks'])
        lines.append(f'| {label(method, bits)} | ' + ' | '.join(cells)
                     + f' | {100 * mean:.1f} % |')
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

    from qail_ros.bench.report import emit_json, environment, table
    torch.set_num_threads(max(1, args.threads))
    s = settings_from(args)
    out = Path(args.out)
    argv = sys.argv[3:] if sys.argv[1:3] == ['bench', 'manipulation'] else sys.argv[1:]
    command = 'qail-ros bench manipulation ' + ' '.join(shlex.quote(a) for a in argv)
    log = (lambda msg: print(msg, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    result: dict[str, Any] = {'benchmark': 'manipulation', 'command': command.strip(),
                              'commit': _commit(),
                              'date': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
                              'settings': s}
    result.update(run(s, out, args.retrain, log))
    result['elapsed_s'] = time.perf_counter() - t0
    result['environment'] = environment()
    result['summary'] = summarize(result)
    files = write_outputs(result, out)
    if args.write:
        files = write_outputs(result, Path(args.write))
    result['files'] = files
    table('manipulation benchmark (closed loop, success rate)',
          ['method', 'task', 'seeds', 'episodes', 'success', 'vs FP'],
          [[label(r['method'], s['bits']), r['task'], r['seeds'], r['episodes'], r['success'],
            '' if r['vs_fp'] is None else f'{100 * r["vs_fp"]:+.0f} pt'] for r in
           result['summary']])
    if args.json:
        emit_json({'benchmark': 'manipulation', 'summary': result['summary'],
                   'settings': s, 'commit': result['commit'], 'files': files})
    return 0
