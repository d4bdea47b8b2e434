"""`qail-ros bench physics`: the QAIL paper's Table 7 on DeepMind Control, measured here.

For each task with a shipped FP policy: the FP policy's return, then per training seed and bit
width a quantized student per method — PTQ-RTN (no training), QAIL alone, QAIL+QBC, QAIL+wQBC,
and optionally QBC alone and LPPD — each evaluated closed-loop over the same environment seeds
(0..episodes-1). Writes OUT/physics.{json,csv,md,png} and prints the table; `--json` prints the
results object as the last line. `--merge` keeps the tasks, bit widths and methods of an
earlier OUT/physics.json that this run did not measure, so tasks and methods can be run at
different times (each result names its run, whose command and commit are listed).

    qail-ros bench physics --task walker-stand --bits w4a4 --seeds 3 --episodes 10
    qail-ros bench physics --quick          # one task, tiny budget: a smoke test (~1 min)
    qail-ros bench physics --teacher runs/swingup --methods fp,ptq_rtn,qail,qail_qbc
    qail-ros bench physics --task hopper-stand --methods fp,qail_qbc --curve 2000,5000,20000

Any task works: `--teacher DIR` (a `qail-ros train-expert` output) gives its FP policy and
expert, and the task (its manifest); without it the task's shipped models are used. `--curve
N1,N2,...` measures retention against training steps: each trained method runs once per seed
to the largest budget and its student is evaluated after N1, N2, ... steps (the learning rate is
constant and nothing else depends on the total, so each point is what a run of that many steps
gives; methods without on-policy QBC train once per budget).
"""
from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from qail_ros.bench.args import add_run_arguments, choose
from qail_ros.report import csv_list, git_commit, write_markdown

HELP = ('QAIL on DeepMind Control (Table 7): FP vs PTQ-RTN vs QAIL vs QAIL+QBC (+wQBC) returns '
        'of W4A4 MLP policies')

ALL_METHODS = ('fp', 'ptq_rtn', 'qail', 'qbc', 'qail_qbc', 'qail_wqbc', 'lppd',
               'qail_qbc_offline', 'qail_wqbc_offline')
#: bench-only variants: the method with on-policy QBC switched off (QBC states = D_QAIL only).
OFFLINE = {'qail_qbc_offline': 'qail_qbc', 'qail_wqbc_offline': 'qail_wqbc'}
DEFAULT_METHODS = ('fp', 'ptq_rtn', 'qail', 'qail_qbc', 'qail_wqbc')
LABELS = {'fp': 'FP32', 'ptq_rtn': 'PTQ-RTN', 'qail': 'QAIL', 'qbc': 'QBC',
          'qail_qbc': 'QAIL+QBC', 'qail_wqbc': 'QAIL+wQBC', 'lppd': 'LPPD',
          'qail_qbc_offline': 'QAIL+QBC (offline)', 'qail_wqbc_offline': 'QAIL+wQBC (offline)'}
#: Table 7 of the QAIL paper (average return; FP32 / INT4 LPPD / INT4 QAIL+QBC).
PAPER_TABLE7 = {
    'cartpole-balance': {'fp': 652, 'lppd': 424, 'qail_qbc': 635},
    'walker-stand': {'fp': 692, 'lppd': 442, 'qail_qbc': 688},
    'hopper-stand': {'fp': 645, 'lppd': 404, 'qail_qbc': 643},
    'cheetah-run': {'fp': 567, 'lppd': 294, 'qail_qbc': 556},
    'finger-spin': {'fp': 684, 'lppd': 421, 'qail_qbc': 640},
    'humanoid-stand': {'fp': 565, 'lppd': 356, 'qail_qbc': 590},
    'humanoid-walk': {'fp': 550, 'lppd': 205, 'qail_qbc': 535},
}
#: physics.md keeps everything from this line on when the benchmark rewrites the file.
FULL = {'seeds': 3, 'episodes': 10, 'steps': 2000, 'expert_episodes': 10, 'fp_episodes': 10,
        'onpolicy_every': 250, 'onpolicy_episodes': 2, 'onpolicy_max_steps': None}
#: D_E and D_FP each get at least this many states (more episodes where episodes end early;
#: 10 episodes of a 1000-step DeepMind Control task already have them). --min-states 0: off
MIN_STATES = 10000
QUICK = {'seeds': 1, 'episodes': 2, 'steps': 60, 'expert_episodes': 1, 'fp_episodes': 1,
         'onpolicy_every': 30, 'onpolicy_episodes': 1, 'onpolicy_max_steps': 200}


def add_arguments(parser):
    parser.add_argument('--task', action='append', default=None,
                        help='task(s), repeatable or comma-separated: DeepMind Control '
                             "domain-task, gym:ENV_ID or module:factory (default: every task "
                             'with a shipped FP policy, or the --teacher tasks; --quick: '
                             'cartpole-balance)')
    parser.add_argument('--teacher', action='append', default=None,
                        help='teacher directory (qail-ros train-expert -o DIR), repeatable: '
                             'its FP policy and expert for its task')
    parser.add_argument('--curve', default=None,
                        help='retention against training steps: comma-separated budgets, e.g. '
                             '2000,5000,20000 (multiples of --onpolicy-every)')
    parser.add_argument('--first-seed', type=int, default=0,
                        help='training seeds first-seed .. first-seed + seeds - 1 (default 0); '
                             'with --merge, the seeds join those of the same methods in OUT')
    parser.add_argument('--bits', action='append', default=None,
                        help='bit widths, e.g. w4a4 (default) or w4a4,w3a3; the first is the '
                             'main one')
    parser.add_argument('--methods', action='append', default=None,
                        help=f'methods among {",".join(ALL_METHODS)} (default '
                             f'{",".join(DEFAULT_METHODS)})')
    add_run_arguments(parser, name='physics', quick='one task, one seed, 2 episodes, 60 steps',
                      seeds='training seeds (3)', episodes='evaluation episodes (10)',
                      out='output directory for physics.{json,csv,md,png}')
    parser.add_argument('--steps', type=int, default=None, help='training steps (2000)')
    parser.add_argument('--lr', type=float, default=3e-4, help='Adam learning rate (3e-4)')
    parser.add_argument('--expert-episodes', type=int, default=None, help='D_E episodes (10)')
    parser.add_argument('--fp-episodes', type=int, default=None, help='D_FP episodes (10)')
    parser.add_argument('--min-states', type=int, default=None,
                        help=f'at least this many states in D_E and in D_FP: more episodes '
                             f'where they end early ({MIN_STATES}; --quick 0)')
    parser.add_argument('--onpolicy-every', type=int, default=None,
                        help='on-policy QBC rollout interval in steps (250; 0 = off)')
    parser.add_argument('--merge', action='store_true',
                        help='keep results of an earlier OUT/physics.json for other tasks, bits '
                             'and methods')
    parser.add_argument('--no-progress', action='store_true', help='no progress bars')


def settings_from(args) -> dict[str, Any]:
    base = dict(QUICK if args.quick else FULL)
    for key in ('seeds', 'episodes', 'steps', 'expert_episodes', 'fp_episodes',
                'onpolicy_every'):
        v = getattr(args, key, None)
        if v is not None:
            base[key] = v
    base['lr'] = args.lr
    min_states = getattr(args, 'min_states', None)
    if min_states is None:
        min_states = 0 if args.quick else MIN_STATES
    if min_states:
        base['min_states'] = int(min_states)
    if getattr(args, 'first_seed', 0):
        base['first_seed'] = int(args.first_seed)
    curve = csv_list([args.curve] if getattr(args, 'curve', None) else None)
    if curve:
        base['curve'] = sorted({int(n) for n in curve})
        base['steps'] = base['curve'][-1]
    return base


def _entry(method: str, bits: str, per_seed: list[list[float]], fp_mean: float | None,
           train_s: list[float], probes: list[dict[str, float]] | None = None) -> dict[str, Any]:
    import numpy as np
    flat = [r for rs in per_seed for r in rs]
    seed_means = [float(np.mean(rs)) for rs in per_seed]
    e = {'method': method, 'bits': bits, 'mean': float(np.mean(flat)),
         'std': float(np.std(flat)), 'seed_std': float(np.std(seed_means)),
         'episodes': len(per_seed[0]), 'seeds': len(per_seed), 'seed_means': seed_means,
         'returns': [[round(r, 2) for r in rs] for rs in per_seed]}
    if fp_mean:
        e['retention'] = e['mean'] / fp_mean
    if train_s:
        e['train_seconds'] = float(np.mean(train_s))
    for key in ('attdiv', 'gap'):
        if probes:
            e[key] = float(np.mean([p[key] for p in probes]))
    return e


def probe_student(student, teacher, states, mean, std) -> tuple[dict[str, float], Any]:
    """AttDiv (state saliency, per dimension) and mean L2 output gap vs the teacher on
    `states`; also the student's mean saliency map (for the figure)."""
    from qail_ros.qail.attdiv import attdiv
    from qail_ros.qail.saliency import state_saliency
    from qail_ros.qail.trainer import output_gap
    s_map = state_saliency(student, states, mean=mean, std=std)
    t_map = state_saliency(teacher, states, mean=mean, std=std)
    return ({'attdiv': float(attdiv(s_map, t_map)),
             'gap': output_gap(student, teacher, states)}, s_map.mean(0))


def run_task(task: str, bits_list: list[str], methods: list[str], s: dict[str, Any],
             progress: bool, log, maps: dict[str, Any] | None = None,
             main_bits: str | None = None, teacher_dir: str | None = None) -> dict[str, Any]:
    """Measure every method x bit width on one task; returns {key: entry}.

    Each trained student is also probed on 512 states of its D_QAIL: AttDiv against the FP
    policy (state saliency per dimension) and the mean L2 output gap. `maps` (if given)
    receives the mean saliency maps of seed 0 for the figure.
    """
    import torch
    from qail_ros.physics.models import load_fp_policy
    from qail_ros.qail.config import TrainConfig
    from qail_ros.physics.qail_tasks import build_qail_data, evaluate_policy, train_on_task

    teacher = load_fp_policy(task, teacher_dir)
    out: dict[str, Any] = {}
    curve = s.get('curve') or []
    log(f'{task}: expected {_fmt_s(estimate_task_seconds(task, teacher, bits_list, methods, s))}'
        ' on this machine now')
    # FP is always measured: it is the reference of every retention figure.
    t0 = time.perf_counter()
    fp_returns = evaluate_policy(teacher, task, s['episodes'])
    out['fp'] = _entry('fp', 'fp32', [fp_returns], None, [])
    fp_mean = out['fp']['mean']
    log(f'{task}: fp {fp_mean:.1f} ({time.perf_counter() - t0:.1f}s)')
    runs: dict[tuple[str, str], list] = {}
    times: dict[tuple[str, str], list] = {}
    probes: dict[tuple[str, str], list] = {}
    first = s.get('first_seed', 0)
    for seed in range(first, first + s['seeds']):
        t0 = time.perf_counter()
        data = build_qail_data(task, expert_episodes=s['expert_episodes'],
                               fp_episodes=s['fp_episodes'], seed=seed, teacher=teacher,
                               teacher_dir=teacher_dir, min_states=s.get('min_states', 0))
        log(f'{task}: seed {seed}: D_QAIL {data.counts()} ({time.perf_counter() - t0:.1f}s)')
        gen = torch.Generator().manual_seed(seed)
        states = data.obs[torch.randperm(len(data), generator=gen)[:512]]
        mean, std = data.obs.mean(0), data.obs.std(0)
        if maps is not None and seed == first:
            from qail_ros.qail.saliency import state_saliency
            maps['fp'] = state_saliency(teacher, states, mean=mean, std=std).mean(0)
        if curve:
            _curve_seed(task, bits_list, methods, s, seed, data, teacher, progress, log, runs,
                        times)
            continue
        for bits in bits_list:
            for method in methods:
                if method == 'fp':
                    continue
                every = 0 if method in OFFLINE else s['onpolicy_every']
                cfg = TrainConfig(method=OFFLINE.get(method, method), bits=bits,
                                  steps=s['steps'], lr=s['lr'], seed=seed, onpolicy_every=every,
                                  onpolicy_episodes=s['onpolicy_episodes'],
                                  onpolicy_max_steps=s['onpolicy_max_steps'],
                                  progress=progress, extra={'task': task})
                res = train_on_task(task, cfg, data=data, teacher=teacher)
                returns = evaluate_policy(res.student, task, s['episodes'])
                probe, s_map = probe_student(res.student, teacher, states, mean, std)
                runs.setdefault((method, bits), []).append(returns)
                times.setdefault((method, bits), []).append(res.seconds)
                probes.setdefault((method, bits), []).append(probe)
                if maps is not None and seed == first:
                    maps[f'{method} {bits}'] = s_map
                log(f'{task}: seed {seed} {bits} {method}: {sum(returns) / len(returns):.1f} '
                    f'(train {res.seconds:.1f}s, on-policy states {res.onpolicy_states}, '
                    f'AttDiv {probe["attdiv"]:.4f}, gap {probe["gap"]:.4f})')
    for run_key, per_seed in runs.items():
        method, bits = run_key[:2]
        key = method if bits == (main_bits or bits_list[0]) else f'{method}_{bits}'
        if len(run_key) == 3:   # a curve point
            key = f'{key}@{run_key[2]}'
        out[key] = _entry(method, bits, per_seed, fp_mean, times.get(run_key, []),
                          probes.get(run_key))
        if len(run_key) == 3:
            out[key]['steps'] = run_key[2]
        out[key]['seed_ids'] = list(range(first, first + s['seeds']))
        out[key]['train_steps'] = run_key[2] if len(run_key) == 3 else s['steps']
    if 'fp' not in methods:
        out['fp']['reference_only'] = True
    return out


def _fmt_s(seconds: float) -> str:
    from qail_ros.physics.teacher import fmt_seconds
    return fmt_seconds(seconds)


def estimate_task_seconds(task: str, teacher, bits_list: list[str], methods: list[str],
                          s: dict[str, Any]) -> float:
    """Expected seconds of run_task with settings `s` (a short measurement of the env step and
    of a quantized training step on this machine)."""
    from qail_ros.qail.config import TrainConfig
    from qail_ros.physics.qail_tasks import estimate_train_seconds, measure_costs
    probe = TrainConfig(method='qail_qbc', bits=bits_list[0], steps=1)
    costs = measure_costs(task, teacher, probe)
    ep = costs['episode_steps']
    per_seed = (s['expert_episodes'] + s['fp_episodes']) * ep * costs['env_s']
    curve = s.get('curve') or []
    for bits in bits_list:
        for method in methods:
            if method == 'fp' or (curve and method == 'ptq_rtn'):
                continue
            every = 0 if method in OFFLINE else s['onpolicy_every']
            cfg = TrainConfig(method=OFFLINE.get(method, method), bits=bits, steps=s['steps'],
                              onpolicy_every=every, onpolicy_episodes=s['onpolicy_episodes'],
                              onpolicy_max_steps=s['onpolicy_max_steps'])
            evals = max(1, len(curve)) * s['episodes']
            per_seed += estimate_train_seconds(cfg, costs, eval_episodes=evals)
    return 1.3 * (s['episodes'] * ep * costs['env_s'] + s['seeds'] * per_seed)


def _curve_seed(task, bits_list, methods, s, seed, data, teacher, progress, log, runs,
                times) -> None:
    """One training seed of --curve: each method trained to the largest budget, its student
    evaluated after every budget (on-policy QBC methods: during one run; others: one run per
    budget)."""
    from qail_ros.qail.config import TrainConfig
    from qail_ros.physics.qail_tasks import evaluate_policy, train_on_task
    curve = s['curve']
    for bits in bits_list:
        for method in methods:
            if method in ('fp', 'ptq_rtn'):
                continue
            every = 0 if method in OFFLINE else s['onpolicy_every']

            def config(steps):
                return TrainConfig(method=OFFLINE.get(method, method), bits=bits, steps=steps,
                                   lr=s['lr'], seed=seed, onpolicy_every=every,
                                   onpolicy_episodes=s['onpolicy_episodes'],
                                   onpolicy_max_steps=s['onpolicy_max_steps'],
                                   progress=progress, extra={'task': task})
            cfg = config(curve[-1])
            t0 = time.perf_counter()
            if cfg.uses_qbc and every > 0:
                points = {n // every: n for n in curve[:-1]}

                def on_round(student, k, points=points):
                    if k in points:
                        rets = evaluate_policy(student, task, s['episodes'])
                        runs.setdefault((method, bits, points[k]), []).append(rets)
                        times.setdefault((method, bits, points[k]), []).append(
                            time.perf_counter() - t0)
                        log(f'{task}: seed {seed} {bits} {method} after {points[k]} steps: '
                            f'{sum(rets) / len(rets):.1f}')
                res = train_on_task(task, cfg, data=data, teacher=teacher, on_round=on_round)
                results = [(curve[-1], res)]
            else:
                results = [(n, train_on_task(task, config(n), data=data, teacher=teacher))
                           for n in curve]
            for n, res in results:
                rets = evaluate_policy(res.student, task, s['episodes'])
                runs.setdefault((method, bits, n), []).append(rets)
                times.setdefault((method, bits, n), []).append(res.seconds)
                log(f'{task}: seed {seed} {bits} {method} after {n} steps: '
                    f'{sum(rets) / len(rets):.1f} (train {res.seconds:.1f}s)')


def _num(v: float | None) -> str:
    return '-' if v is None else f'{v:.4f}'


def _fmt(e: dict[str, Any] | None, with_ret: bool = True) -> str:
    if not e:
        return '-'
    txt = f'{e["mean"]:.0f} ± {e["std"]:.0f}'
    if with_ret and 'retention' in e:
        txt += f' ({100 * e["retention"]:.0f}%)'
    return txt


def markdown(result: dict[str, Any]) -> str:
    """The Markdown page: Table 7 layout, ours beside the paper's, then stretch bit widths."""
    res = result['results']
    main_bits = result['settings'].get('main_bits', 'w4a4')
    methods = [m for m in ALL_METHODS if m != 'fp' and any(m in r for r in res.values())]
    lines = ['# Physics benchmark: QAIL on DeepMind Control (the QAIL paper\'s Table 7)', '',
             'Average return over evaluation episodes (mean ± std over all episodes of all '
             'training seeds; in brackets: share of our FP32 return). Paper columns: Table 7 of '
             'the QAIL paper (FP32 / INT4 LPPD / INT4 QAIL+QBC).', '']
    head = ['Task', 'FP32 (ours)'] + [f'{LABELS[m]} {main_bits.upper()}' for m in methods] + [
        'paper FP32', 'paper LPPD INT4', 'paper QAIL+QBC INT4']
    lines += ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    sums: dict[str, list[float]] = {}
    for task, r in res.items():
        paper = PAPER_TABLE7.get(task, {})
        cells = [task, _fmt(r.get('fp'), False)] + [_fmt(r.get(m)) for m in methods] + [
            str(paper.get(k, '-')) for k in ('fp', 'lppd', 'qail_qbc')]
        lines.append('| ' + ' | '.join(cells) + ' |')
        for m in methods:
            if m in r and 'retention' in r[m]:
                sums.setdefault(m, []).append(r[m]['retention'])
    if sums:
        cells = ['**mean retention**', '100%'] + [
            f'{100 * sum(sums[m]) / len(sums[m]):.1f}%' if m in sums else '-' for m in methods]
        p_ret = [PAPER_TABLE7[t]['qail_qbc'] / PAPER_TABLE7[t]['fp'] for t in res
                 if t in PAPER_TABLE7]
        pl = [PAPER_TABLE7[t]['lppd'] / PAPER_TABLE7[t]['fp'] for t in res if t in PAPER_TABLE7]
        cells += ['100%', f'{100 * sum(pl) / len(pl):.1f}%' if pl else '-',
                  f'{100 * sum(p_ret) / len(p_ret):.1f}%' if p_ret else '-']
        lines.append('| ' + ' | '.join(cells) + ' |')
    other = sorted({e['bits'] for r in res.values() for k, e in r.items()
                    if isinstance(e, dict) and e.get('bits') not in (main_bits, 'fp32')})
    for bits in other:
        lines += ['', f'## Stretch: {bits.upper()}', '',
                  '| Task | FP32 (ours) | ' + ' | '.join(LABELS[m] for m in methods) + ' |',
                  '|' + '---|' * (len(methods) + 2)]
        for task, r in res.items():
            cells = [task, _fmt(r.get('fp'), False)] + [_fmt(r.get(f'{m}_{bits}'))
                                                        for m in methods]
            lines.append('| ' + ' | '.join(cells) + ' |')
    lines += ['', '## Per-seed means', '', '| Task | Method | Bits | seeds | episodes | '
              'per-seed means | std of seed means | train s/run | AttDiv | output gap |',
              '|' + '---|' * 10]
    for task, r in res.items():
        for key, e in r.items():
            if not isinstance(e, dict) or 'seed_means' not in e:
                continue
            means = ', '.join(f'{m:.1f}' for m in e['seed_means'])
            lines.append(f'| {task} | {LABELS.get(e["method"], e["method"])} | {e["bits"]} | '
                         f'{e["seeds"]} | {e["episodes"]} | {means} | {e["seed_std"]:.1f} | '
                         f'{e.get("train_seconds", 0):.0f} | {_num(e.get("attdiv"))} | '
                         f'{_num(e.get("gap"))} |')
    curve = [(task, e) for task, r in res.items() for e in r.values()
             if isinstance(e, dict) and 'steps' in e]
    if curve:
        lines += ['', '## Retention against training steps (--curve)', '',
                  '| Task | Method | Bits | training steps | return | of FP | per-seed means |',
                  '|' + '---|' * 7]
        for task, e in sorted(curve, key=lambda te: (te[0], te[1]['method'], te[1]['bits'],
                                                     te[1]['steps'])):
            means = ', '.join(f'{m:.1f}' for m in e['seed_means'])
            ret = f'{100 * e["retention"]:.1f}%' if 'retention' in e else '-'
            lines.append(f'| {task} | {LABELS.get(e["method"], e["method"])} | {e["bits"]} | '
                         f'{e["steps"]} | {e["mean"]:.1f} ± {e["std"]:.1f} | {ret} | {means} |')
    lines += ['', '## How it was made', '']
    for name, run in result.get('runs', {}).items():
        st = {k: v for k, v in run.get('settings', {}).items() if k != 'main_bits'}
        lines.append(f'- {name}: `{run["command"]}` (commit {run["commit"]}, {run["date"]}, '
                     f'{run["seconds"]:.0f} s); settings {json.dumps(st)}')
    lines.append('')
    return '\n'.join(lines)


def plot(result: dict[str, Any], path: Path) -> Path:
    """Grouped bars of mean return (± std) per method, one panel per task."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    res = result['results']
    tasks = list(res)
    fig, axes = plt.subplots(1, max(1, len(tasks)), figsize=(4.5 * max(1, len(tasks)), 3.6),
                             squeeze=False)
    for ax, task in zip(axes[0], tasks):
        keys = [k for k, e in res[task].items() if isinstance(e, dict) and 'mean' in e]
        means = [res[task][k]['mean'] for k in keys]
        stds = [res[task][k]['std'] for k in keys]
        labels = [LABELS.get(res[task][k]['method'], k) + ('' if res[task][k]['bits'] in (
            'fp32', result['settings'].get('main_bits')) else f'\n{res[task][k]["bits"]}')
            for k in keys]
        colors = ['tab:gray' if k == 'fp' else 'tab:red' if 'ptq' in k else 'tab:blue'
                  for k in keys]
        ax.bar(range(len(keys)), means, yerr=stds, color=colors, capsize=3)
        ax.set_xticks(range(len(keys)), labels, rotation=45, ha='right', fontsize=8)
        ax.set_title(task, fontsize=10)
        ax.set_ylabel('return')
        if means and min(means) >= 0 and max(means) <= 1000:
            ax.set_ylim(0, 1050)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_curve(result: dict[str, Any], path: Path) -> Path | None:
    """Share of FP return against training steps (--curve), one line per task x method."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    lines: dict[tuple[str, str, str], list] = {}
    for task, r in result['results'].items():
        for e in r.values():
            if isinstance(e, dict) and 'steps' in e and 'retention' in e:
                lines.setdefault((task, e['method'], e['bits']), []).append(e)
    if not lines:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for (task, method, bits), es in sorted(lines.items()):
        es = sorted(es, key=lambda e: e['steps'])
        fp = es[0]['mean'] / es[0]['retention']
        ys = [100 * e['mean'] / fp for e in es]
        err = [100 * e['seed_std'] / fp for e in es]
        ax.errorbar([e['steps'] for e in es], ys, yerr=err, marker='o', capsize=3,
                    label=f'{task} {LABELS.get(method, method)} {bits}')
    ax.axhline(95, color='gray', ls='--', lw=1)
    ax.set_xscale('log')
    ax.set_xlabel('training steps')
    ax.set_ylabel('% of FP return (error bar: std of seed means)')
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_outputs(result: dict[str, Any], out: Path) -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    (out / 'physics.json').write_text(json.dumps(result, indent=1) + '\n')
    with (out / 'physics.csv').open('w') as f:
        f.write('task,method,bits,mean,std,seed_std,episodes,seeds,retention,train_seconds\n')
        for task, r in result['results'].items():
            for e in r.values():
                if isinstance(e, dict) and 'mean' in e:
                    f.write(f'{task},{e["method"]},{e["bits"]},{e["mean"]:.2f},{e["std"]:.2f},'
                            f'{e["seed_std"]:.2f},{e["episodes"]},{e["seeds"]},'
                            f'{e.get("retention", 1.0):.4f},{e.get("train_seconds", 0):.1f}\n')
    write_markdown(out / 'physics.md', markdown(result))
    plot(result, out / 'physics.png')
    files = {k: str(out / f'physics.{k}') for k in ('json', 'csv', 'md', 'png')}
    if plot_curve(result, out / 'physics_curve.png'):
        files['curve_png'] = str(out / 'physics_curve.png')
    return files


def _same_protocol(kept: Any, entry: Any) -> bool:
    """Two entries of one method measured on other training seeds, otherwise alike."""
    if not (isinstance(kept, dict) and isinstance(entry, dict)):
        return False
    keys = ('method', 'bits', 'episodes', 'steps', 'train_steps')
    same = all(kept.get(k) == entry.get(k) for k in keys)
    a, b = set(kept.get('seed_ids') or ()), set(entry.get('seed_ids') or ())
    return same and bool(a) and bool(b) and not a & b


def _combine_seeds(kept: dict[str, Any], entry: dict[str, Any],
                   fp_mean: float | None) -> dict[str, Any]:
    """One entry over the training seeds of both (bench physics --merge --first-seed K)."""
    pairs = sorted(zip(kept['seed_ids'] + entry['seed_ids'], kept['returns'] + entry['returns']))
    n_k, n_e = kept['seeds'], entry['seeds']
    train = [kept.get('train_seconds', 0.0)] * n_k + [entry.get('train_seconds', 0.0)] * n_e
    probes = None
    if 'attdiv' in kept and 'attdiv' in entry:
        probes = [{k: kept[k] for k in ('attdiv', 'gap')}] * n_k + [
            {k: entry[k] for k in ('attdiv', 'gap')}] * n_e
    out = _entry(entry['method'], entry['bits'], [r for _, r in pairs], fp_mean,
                 train if 'train_seconds' in entry else [], probes)
    for k in ('steps', 'train_steps'):
        if k in entry:
            out[k] = entry[k]
    out['seed_ids'] = [i for i, _ in pairs]
    out['run'] = ', '.join(dict.fromkeys(f'{kept.get("run")}, {entry.get("run")}'.split(', ')))
    return out


def _merge_task(result: dict[str, Any], task: str, measured: dict[str, Any],
                run: dict[str, Any], merge: bool) -> None:
    """Put one task's measured methods into `result`, keeping the others (per method)."""
    bits_list, methods = run['bits'], run['methods']
    run_key = f'{task} {",".join(bits_list)}'
    if merge and result['runs'].get(run_key, {}).get('methods') not in (None, methods):
        run_key += f' [{",".join(methods)}]'
    first = run['settings'].get('first_seed', 0)
    if first:
        run_key += f' seeds {first}..{first + run["settings"]["seeds"] - 1}'
    for entry in measured.values():
        if isinstance(entry, dict):
            entry['run'] = run_key
    merged = dict(result['results'].get(task, {}))
    for key, entry in measured.items():
        kept = merged.get(key)
        # FP returns are deterministic (eval seeds 0..N-1): the longer evaluation stays
        if (key == 'fp' and isinstance(kept, dict) and isinstance(entry, dict)
                and kept.get('episodes', 0) >= entry.get('episodes', 0)):
            continue
        if merge and _same_protocol(kept, entry):
            entry = _combine_seeds(kept, entry, merged.get('fp', {}).get('mean'))
        merged[key] = entry
    result['results'][task] = merged
    result['runs'][run_key] = run


def main(args) -> int:
    import torch

    from qail_ros.report import emit_json, environment, table
    from qail_ros.errors import ParameterError
    from qail_ros.physics.models import shipped_tasks, teacher_task
    from qail_ros.physics.tasks import check_task
    from qail_ros.qail.config import parse_bits

    torch.set_num_threads(max(1, args.threads))
    s = settings_from(args)
    teachers: dict[str, str] = {}
    for d in csv_list(getattr(args, 'teacher', None)):
        teachers[teacher_task(d)] = d
    tasks = csv_list(args.task)
    if not tasks:
        tasks = list(teachers) or (['cartpole-balance'] if args.quick else shipped_tasks())
    if args.quick:
        tasks = tasks[:1]
    for t in tasks:
        check_task(t)
    bits_list = [b.lower() for b in csv_list(args.bits)] or ['w4a4']
    for b in bits_list:
        parse_bits(b)
    methods = choose('--methods', csv_list(args.methods), ALL_METHODS, DEFAULT_METHODS)
    if s['seeds'] < 1 or s['episodes'] < 1:
        raise ParameterError('--seeds and --episodes must be >= 1')
    if s.get('curve'):
        every = s['onpolicy_every']
        odd = [n for n in s['curve'] if n < 1 or (every and n % every)]
        if odd:
            raise ParameterError(f'--curve budgets {odd} must be positive multiples of '
                                 f'--onpolicy-every ({every})')
    missing = [t for t in tasks if t not in teachers and t not in shipped_tasks()]
    if missing:
        raise ParameterError(f'no FP policy for {missing}: train one with qail-ros train-expert '
                             f'--task TASK -o DIR and pass --teacher DIR (shipped: '
                             f'{shipped_tasks()})')
    out = Path(args.out)
    result: dict[str, Any] = {'benchmark': 'physics', 'results': {}, 'runs': {}}
    s['main_bits'] = bits_list[0]
    if args.merge and (out / 'physics.json').is_file():
        old = json.loads((out / 'physics.json').read_text())
        result['results'] = old.get('results', {})
        result['runs'] = old.get('runs', {})
        # the main bit width (unsuffixed keys, main table) stays the earlier file's
        s['main_bits'] = old.get('settings', {}).get('main_bits', bits_list[0])
    command = 'qail-ros bench physics ' + ' '.join(shlex.quote(a) for a in sys.argv[3:]) if (
        sys.argv[1:3] == ['bench', 'physics']) else 'qail-ros ' + ' '.join(
        shlex.quote(a) for a in sys.argv[1:])
    commit = git_commit()
    log = (lambda msg: print(msg, file=sys.stderr, flush=True))
    done: list[tuple[str, dict, dict]] = []
    for task in tasks:
        t0 = time.perf_counter()
        maps: dict[str, Any] = {}
        measured = run_task(task, bits_list, methods, s, not args.no_progress, log, maps,
                            main_bits=s['main_bits'], teacher_dir=teachers.get(task))
        if len(maps) > 1:
            from qail_ros.physics.tasks import task_slug
            from qail_ros.qail.attdiv import save_saliency_png
            name = f'physics_saliency_{task_slug(task)}_{"_".join(bits_list)}.png'
            fig = save_saliency_png(list(maps.values()), out / name,
                                    titles=list(maps),
                                    suptitle=f'{task}: mean state saliency per dimension '
                                             '(seed 0)')
            log(f'{task}: saliency maps -> {fig}')
        done.append((task, measured, {
            'command': command, 'commit': commit,
            'date': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
            'seconds': round(time.perf_counter() - t0, 1),
            'settings': dict(s), 'bits': bits_list, 'methods': methods,
            **({'teacher': teachers[task]} if task in teachers else {})}))
    if args.merge and (out / 'physics.json').is_file():
        # read again: another run may have written the file while this one trained
        fresh = json.loads((out / 'physics.json').read_text())
        result['results'] = fresh.get('results', {})
        result['runs'] = fresh.get('runs', {})
    for task, measured, run in done:
        _merge_task(result, task, measured, run, args.merge)
    result['settings'] = s
    result['paper'] = {t: PAPER_TABLE7[t] for t in result['results'] if t in PAPER_TABLE7}
    result['command'] = command
    result['commit'] = commit
    result['environment'] = environment()
    result['files'] = write_outputs(result, out)
    rows = []
    for task, r in result['results'].items():
        for e in r.values():
            if isinstance(e, dict) and 'mean' in e:
                rows.append([task, LABELS.get(e['method'], e['method']), e['bits'], e['mean'],
                             e['std'], e['seed_std'], e['seeds'], e['episodes'],
                             f'{100 * e.get("retention", 1.0):.1f}%'])
    table('physics benchmark (return)', ['task', 'method', 'bits', 'mean', 'std', 'seed_std',
                                         'seeds', 'episodes', 'of FP'], rows)
    if args.json:
        emit_json(result)
    return 0
