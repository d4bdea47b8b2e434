"""The manipulation benchmark's pipeline: the OpenVLA result in small, FP vs AWQ-INT4 vs
QLoRA QAIL vs QLoRA QAIL+QBC success on language-conditioned table-top tasks.

`run(settings, out, retrain)` does every step (`qail-ros bench manipulation` parses the
arguments into the settings, calls it and prints the tables; see qail_ros/bench/manipulation.py
for the steps and the options):
1. D_E: the scripted expert on training seeds (clean episodes + DART-noised ones).
2. FP: a small OpenVLA-architecture VLA trained by behaviour cloning on D_E (cached in OUT/fp).
3. D_FP: the FP policy's rollouts on other training seeds; D_QAIL = D_E + D_FP.
4. INT4 (or INT3 / INT2) students: RTN, AWQ, and QLoRA QAIL / QAIL+QBC from AWQ.
5. Closed-loop evaluation of every policy on the same held-out seeds; `summarize` and
   `paired_comparisons` (McNemar's exact test through scipy.stats) turn the outcomes into rows.
Progress goes to this module's logger.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from qail_ros.errors import ParameterError

__all__ = ['run', 'summarize', 'paired_comparisons', 'mcnemar_exact', 'binomial_se',
           'check_reuse', 'load_student_adapters', 'results_name', 'quant_kwargs',
           'ALL_METHODS', 'BITS', 'FP_KEYS', 'STUDENT_KEYS', 'PAIRS']

log = logging.getLogger(__name__)

ALL_METHODS = ('fp', 'rtn_int4', 'awq_int4', 'qail_int4', 'qail_qbc_int4')
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


def results_name(s: dict[str, Any]) -> str:
    """File stem for --write: manipulation (INT4, the committed table) or manipulation_int3."""
    return 'manipulation' if s.get('bits', 4) == 4 else f'manipulation_int{s["bits"]}'


def quant_kwargs(s: dict[str, Any]) -> dict[str, Any]:
    """quantize_awq's width and granularity for these settings."""
    g = s.get('group_size', 0)
    return {'bits': s.get('bits', 4), 'granularity': 'group' if g else 'per_channel',
            'group_size': g or 128}


def collect_demos(s: dict[str, Any]):
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
    log.info(f'D_E: {len(data)} samples; expert success {rates}')
    return data, rates


def _rate(results) -> float:
    return float(sum(r['success'] for r in results) / max(len(results), 1))


def fp_model(s: dict[str, Any], out: Path, demos, retrain: bool):
    """The FP VLA: reused from OUT/fp when trained with the same settings."""
    from qail_ros.manipulation.vla import SmallVLA, bc_train, stats_from
    key = {k: s[k] for k in FP_KEYS}
    meta = out / 'fp' / 'qail_ros_training.json'
    if not retrain and meta.is_file():
        old = json.loads(meta.read_text())
        if old.get('settings') == key:
            log.info(f'FP VLA: reusing {out / "fp"} (same settings; --retrain to train again)')
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
        log.info('FP BC step %d: policy success %s on %d rollouts per task', step, rates,
                 s['dagger_episodes'])
        return Samples.concat(got) if s['dagger_rounds'] else None

    checks = s['dagger_rounds'] or 4
    losses = bc_train(vla, demos, steps=s['bc_steps'], batch=s['batch'], lr=s['bc_lr'],
                      every=(max(s['bc_steps'] // (checks + 1), 1), dagger))
    info = {'settings': key, 'seconds': time.perf_counter() - t0,
            'final_loss': float(sum(losses[-100:]) / len(losses[-100:])),
            'parameters': sum(p.numel() for p in vla.model.parameters()),
            'progress': progress}
    vla.save(out / 'fp')
    meta.write_text(json.dumps(info, indent=1) + '\n')
    return vla, info


def evaluate_all(policy, s: dict[str, Any], name: str) -> dict[str, Any]:
    from qail_ros.manipulation.vla import evaluate
    res = {}
    for k, task in enumerate(s['tasks']):
        seeds = [EVAL_SEED0 + 10_000 * k + i for i in range(s['eval_episodes'])]
        res[task] = evaluate(policy, task, seeds, batch=EVAL_BATCH)
        r = res[task]
        log.info('%s %s: success %.3f (%d/%d), %.0f s', name, task, r['success'],
                 r['successes'], r['episodes'], r['seconds'])
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


def run(s: dict[str, Any], out: Path, retrain: bool,
        reuse_students: bool = False) -> dict[str, Any]:
    import torch

    from qail_ros.manipulation.qail_vla import deploy, quantize_awq, train_qlora
    from qail_ros.manipulation.vla import Samples, rollouts
    from qail_ros.quant.lora import save_lora
    out.mkdir(parents=True, exist_ok=True)
    records = check_reuse(out, s, retrain) if reuse_students else {}
    demos, expert_rates = collect_demos(s)
    fp, fp_info = fp_model(s, out, demos, retrain)
    for (method, seed), rec in records.items():
        if rec.get('fp_final_loss') not in (None, fp_info.get('final_loss')):
            raise ParameterError(f'--reuse-students: {adapter_path(out, method, seed)} was '
                                 f'trained from another FP checkpoint (final loss '
                                 f'{rec["fp_final_loss"]}, {out / "fp"}: '
                                 f'{fp_info.get("final_loss")}): drop --reuse-students')
    fp.model.eval()
    results: dict[str, Any] = {'expert_success': expert_rates, 'fp_training': fp_info,
                               'methods': {}}
    results['methods']['fp'] = {'seeds': [evaluate_all(fp.act, s, 'FP')]}
    parts = []
    for k, task in enumerate(s['tasks']):
        seeds = [FP_SEED0 + 1000 * k + i for i in range(s['fp_episodes'])]
        d_fp, res = rollouts(task, seeds, fp.act)
        parts.append(d_fp)
        log.info(f'D_FP {task}: {len(d_fp)} samples, FP success on them {_rate(res):.2f}')
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
                log.info(f'{method} seed {seed}: reusing adapters {path} (not trained)')
            elif method.startswith('qail'):
                info = train_qlora(
                    student, fp, d_qail, steps=s['qlora_steps'], lr=s['qlora_lr'],
                    rank=s['rank'], batch=s['batch'], seed=seed,
                    qbc_lambda=1.0 if method == 'qail_qbc_int4' else 0.0, tasks=s['tasks'],
                    onpolicy_rounds=s['onpolicy_rounds'],
                    onpolicy_episodes=s['onpolicy_episodes'])
                training.append(info)
                path = save_lora(student.model.language_model,
                                 adapter_path(out, method, seed))
                path.with_suffix('.json').write_text(json.dumps(
                    {'settings': student_settings(s),
                     'fp_final_loss': fp_info.get('final_loss'), 'training': info},
                    indent=1) + '\n')
            deploy(student)
            per_seed.append(evaluate_all(student.act, s, f'{method} seed {seed}'))
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
    student seeds on the same episodes are not quite independent: a lower bound then):
    the standard deviation of Binomial(n, p) / n (scipy.stats)."""
    if not n:
        return float('nan')
    from scipy.stats import binom
    return float(binom(n, p).std() / n)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for b and c discordant pairs (A only / B only
    succeeded): the exact binomial test of min(b, c) successes in b + c trials at 1/2
    (scipy.stats.binomtest), i.e. 2 * P(X <= min(b, c)) capped at 1."""
    if b < 0 or c < 0:
        raise ValueError(f'discordant counts must be >= 0, got {b}, {c}')
    if b + c == 0:
        return 1.0
    from scipy.stats import binomtest
    return min(1.0, float(binomtest(min(b, c), b + c, 0.5, alternative='two-sided').pvalue))


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
