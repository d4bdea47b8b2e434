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

import json
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from qail_ros.report import csv_list, git_commit, write_results
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
#: settings that determine a QLoRA student besides the FP model (--reuse-students checks them)
STUDENT_KEYS = FP_KEYS + ('fp_episodes', 'bits', 'group_size', 'rank', 'qlora_steps',
                          'qlora_lr', 'onpolicy_rounds', 'onpolicy_episodes')
#: paired comparisons (McNemar) reported when both methods ran: (A, B)
PAIRS = (('qail_qbc_int4', 'rtn_int4'), ('qail_qbc_int4', 'awq_int4'),
         ('qail_qbc_int4', 'qail_int4'), ('fp', 'rtn_int4'), ('fp', 'awq_int4'),
         ('fp', 'qail_int4'), ('fp', 'qail_qbc_int4'))
EVAL_SEED0 = 100_000          # evaluation seeds: never used for training
EVAL_BATCH = 50               # episodes run in lock-step by vla.evaluate: fixes the numerics
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
    parser.add_argument('--reuse-students', action='store_true',
                        help='load the QLoRA adapters saved in OUT '
                             '({method}_seed{k}_adapters.safetensors) instead of training '
                             'them (needs the cached FP and the same settings)')
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
        res[task] = evaluate(policy, task, seeds, batch=EVAL_BATCH)
        log(f'{name} {task}: success {res[task]["success"]:.3f} '
            f'({res[task]["successes"]}/{res[task]["episodes"]}), '
            f'{res[task]["seconds"]:.0f} s')
    return res


def student_settings(s: dict[str, Any]) -> dict[str, Any]:
    """The settings a saved QLoRA student was trained with (compared by --reuse-students)."""
    return {k: s[k] for k in STUDENT_KEYS}


def adapter_path(out: Path, method: str, seed: int) -> Path:
    return out / f'{method}_seed{seed}_adapters.safetensors'


def _old_record(out: Path, s: dict[str, Any], method: str, seed: int) -> dict | None:
    """How adapters in OUT were trained: their sidecar JSON (written since
    --reuse-students exists), else the results JSON of the run that saved them."""
    side = adapter_path(out, method, seed).with_suffix('.json')
    if side.is_file():
        return json.loads(side.read_text())
    res = out / f'{results_name(s)}.json'
    if not res.is_file():
        return None
    old = json.loads(res.read_text())
    trained = old.get('methods', {}).get(method, {}).get('training', [])
    if seed >= len(trained):
        return None
    settings = {'bits': 4, 'group_size': 0, **old.get('settings', {})}
    return {'settings': {k: settings.get(k) for k in STUDENT_KEYS},
            'fp_final_loss': old.get('fp_training', {}).get('final_loss'),
            'training': trained[seed], 'source': str(res)}


def check_reuse(out: Path, s: dict[str, Any], retrain: bool) -> dict[tuple[str, int], dict]:
    """Before any work: every adapter file --reuse-students needs exists, with a record of
    matching settings, and the FP checkpoint they were trained on is cached in OUT/fp.
    Returns the records by (method, seed)."""
    if retrain:
        raise ParameterError('--reuse-students with --retrain: a retrained FP model would not '
                             'be the teacher the saved adapters were trained from; drop one '
                             'of the two')
    meta = out / 'fp' / 'qail_ros_training.json'
    want = {k: s[k] for k in FP_KEYS}
    if not meta.is_file() or json.loads(meta.read_text()).get('settings') != want:
        raise ParameterError(f'--reuse-students: no FP checkpoint with these settings in '
                             f'{out / "fp"}: pass the --out (and settings) of the run that '
                             'trained the students, or drop --reuse-students to train them')
    records = {}
    for method in s['methods']:
        if not method.startswith('qail'):
            continue
        for seed in range(s['seeds']):
            path = adapter_path(out, method, seed)
            if not path.is_file():
                raise ParameterError(f'--reuse-students: {path} is missing: run once without '
                                     f'--reuse-students (and --seeds {seed + 1} or more) to '
                                     'train it, or lower --seeds')
            rec = _old_record(out, s, method, seed)
            if rec is None:
                raise ParameterError(f'--reuse-students: no record of how {path} was trained '
                                     f'(neither {path.with_suffix(".json")} nor the results '
                                     f'JSON in {out}): drop --reuse-students to train it again')
            bad = {k: (v, s[k]) for k, v in rec['settings'].items() if v != s[k]}
            if bad:
                raise ParameterError(
                    f'--reuse-students: {path} was trained with other settings '
                    + ', '.join(f'{k}={old!r} (now {new!r})' for k, (old, new) in bad.items())
                    + ': pass those settings, or drop --reuse-students to train again')
            records[(method, seed)] = rec
    return records


def load_student_adapters(student, path: Path, s: dict[str, Any], seed: int) -> None:
    """Wrap the student's Llama as train_qlora does (rank, default alpha) and load saved
    adapters into it; refuses a rank / alpha that differs from the file's metadata."""
    from safetensors import safe_open

    from qail_ros.quant.lora import add_lora, load_lora
    with safe_open(str(path), 'pt') as f:
        meta = f.metadata() or {}
    alpha = float(min(s['rank'], 16))          # train_qlora's default (alpha=None)
    if meta.get('rank') is None or int(meta['rank']) != s['rank'] \
            or float(meta.get('alpha', 'nan')) != alpha:
        raise ParameterError(f'--reuse-students: {path} holds rank {meta.get("rank")} alpha '
                             f'{meta.get("alpha")} adapters, this run rank {s["rank"]} alpha '
                             f'{alpha}: pass --rank {meta.get("rank")}, or drop '
                             '--reuse-students to train them again')
    add_lora(student.model.language_model, rank=s['rank'], alpha=alpha, seed=seed)
    try:
        load_lora(student.model.language_model, path)
    except ValueError as exc:
        raise ParameterError(f'--reuse-students: {exc}') from exc
    student.model.eval()


def run(s: dict[str, Any], out: Path, retrain: bool, log,
        reuse_students: bool = False) -> dict[str, Any]:
    import torch

    from qail_ros.manipulation.qail_vla import deploy, quantize_awq, train_qlora
    from qail_ros.manipulation.vla import Samples, rollouts
    from qail_ros.quant.lora import save_lora
    out.mkdir(parents=True, exist_ok=True)
    records = check_reuse(out, s, retrain) if reuse_students else {}
    demos, expert_rates = collect_demos(s, log)
    fp, fp_info = fp_model(s, out, demos, retrain, log)
    for (method, seed), rec in records.items():
        if rec.get('fp_final_loss') not in (None, fp_info.get('final_loss')):
            raise ParameterError(f'--reuse-students: {adapter_path(out, method, seed)} was '
                                 f'trained from another FP checkpoint (final loss '
                                 f'{rec["fp_final_loss"]}, {out / "fp"}: '
                                 f'{fp_info.get("final_loss")}): drop --reuse-students')
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
            if (method, seed) in records:
                path = adapter_path(out, method, seed)
                load_student_adapters(student, path, s, seed)
                training.append({**records[(method, seed)]['training'],
                                 'reused_from': str(path)})
                log(f'{method} seed {seed}: reusing adapters {path} (not trained)')
            elif method.startswith('qail'):
                info = train_qlora(
                    student, fp, d_qail, steps=s['qlora_steps'], lr=s['qlora_lr'],
                    rank=s['rank'], batch=s['batch'], seed=seed,
                    qbc_lambda=1.0 if method == 'qail_qbc_int4' else 0.0, tasks=s['tasks'],
                    onpolicy_rounds=s['onpolicy_rounds'],
                    onpolicy_episodes=s['onpolicy_episodes'], log=log)
                training.append(info)
                path = save_lora(student.model.language_model,
                                 adapter_path(out, method, seed))
                path.with_suffix('.json').write_text(json.dumps(
                    {'settings': student_settings(s),
                     'fp_final_loss': fp_info.get('final_loss'), 'training': info},
                    indent=1) + '\n')
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
                         'vs_fp': None if fp_rate is None else mean - fp_rate,
                         'se': binomial_se(mean, n)})
    return rows


def binomial_se(p: float, n: int) -> float:
    """Standard error of a success rate over n episodes taken as independent (several
    student seeds on the same episodes are not quite independent: a lower bound then)."""
    return math.sqrt(p * (1 - p) / n) if n else float('nan')


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for b and c discordant pairs (A only / B only
    succeeded): 2 * P(X <= min(b, c)) for X ~ Binomial(b + c, 1/2), capped at 1."""
    if b < 0 or c < 0:
        raise ValueError(f'discordant counts must be >= 0, got {b}, {c}')
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2 ** n)


def _outcomes(seed_result: dict[str, Any], tasks: list[str]) -> list[int] | None:
    if not all('outcomes' in seed_result.get(t, {}) for t in tasks):
        return None
    return [o for t in tasks for o in seed_result[t]['outcomes']]


def _paired(a: list[int], b: list[int]) -> dict[str, Any]:
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    n = len(a)
    return {'episodes': n, 'a_success': sum(a) / n, 'b_success': sum(b) / n,
            'diff': (sum(a) - sum(b)) / n, 'a_only': only_a, 'b_only': only_b,
            'both': sum(1 for x, y in zip(a, b) if x and y), 'p': mcnemar_exact(only_a, only_b)}


def paired_comparisons(result: dict[str, Any]) -> list[dict[str, Any]]:
    """McNemar's exact test for each pair of PAIRS, on per-episode outcomes over all tasks
    (every method runs on the same evaluation episodes). A method with several student seeds
    is paired seed by seed with a one-seed method (or seed k with seed k of another
    multi-seed one), then 'pooled': all those pairs together (pairs that share a PTQ episode
    are not independent, so the pooled p-value is optimistic). Empty for results without
    stored outcomes."""
    tasks = result['settings']['tasks']
    methods = result['methods']
    out = []
    for a, b in PAIRS:
        if a not in methods or b not in methods:
            continue
        sa = [_outcomes(r, tasks) for r in methods[a]['seeds']]
        sb = [_outcomes(r, tasks) for r in methods[b]['seeds']]
        if any(o is None for o in sa + sb):
            continue
        if len(sa) > 1 and len(sb) > 1:
            pairs = [(k, k) for k in range(min(len(sa), len(sb)))]
        else:
            pairs = [(i, j) for i in range(len(sa)) for j in range(len(sb))]
        rows = []
        for i, j in pairs:
            rows.append({'a': a, 'b': b, 'a_seed': i, 'b_seed': j,
                         'seed': i if len(sa) > 1 else (j if len(sb) > 1 else None),
                         **_paired(sa[i], sb[j])})
        if len(pairs) > 1:
            rows.append({'a': a, 'b': b, 'a_seed': None, 'b_seed': None, 'seed': 'pooled',
                         **_paired([x for i, _ in pairs for x in sa[i]],
                                   [y for _, j in pairs for y in sb[j]])})
        out += rows
    return out


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
    torch.set_num_threads(max(1, args.threads))
    s = settings_from(args)
    out = Path(args.out)
    argv = sys.argv[3:] if sys.argv[1:3] == ['bench', 'manipulation'] else sys.argv[1:]
    command = 'qail-ros bench manipulation ' + ' '.join(shlex.quote(a) for a in argv)
    log = (lambda msg: print(msg, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    result: dict[str, Any] = {'benchmark': 'manipulation', 'command': command.strip(),
                              'commit': git_commit(),
                              'date': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
                              'settings': s}
    result.update(run(s, out, args.retrain, log,
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
