"""`qail-ros train`: quantize a task's FP policy and fine-tune it with QAIL / QBC / wQBC / LPPD.

    qail-ros train --task walker-stand --method qail_qbc --bits w4a4 --steps 2000 -o runs/ws

writes OUT/policy.safetensors (the student; `qail-ros eval --policy OUT`), OUT/train.yaml (the
TrainConfig, reusable with --config), OUT/history.jsonl (losses) and OUT/summary.json, then
evaluates the student over --eval-episodes episodes.
"""
from __future__ import annotations

HELP = 'train a quantized policy with QAIL (+QBC / wQBC) on a physics task'

#: physics defaults (METHOD.md: Adam lr 3e-4 for the MLP policies); steps fit a CPU budget.
PHYSICS_DEFAULTS = {'steps': 2000, 'lr': 3e-4, 'batch_size': 256, 'onpolicy_every': 250,
                    'onpolicy_episodes': 2}


def add_arguments(parser):
    parser.add_argument('--task', required=True,
                        help='physics task, e.g. cartpole-balance, walker-stand')
    parser.add_argument('--method', default=None,
                        help='ptq_rtn | qat (= qail) | qbc | qail_qbc | qail_wqbc | lppd '
                             '(default qail_qbc, or the --config value)')
    parser.add_argument('--bits', default=None, help='w4a4 (default), w3a3, w8a8, w4a16 ...')
    parser.add_argument('--steps', type=int, default=None, help='optimiser steps (default 2000)')
    parser.add_argument('--seed', type=int, default=None, help='training seed (default 0)')
    parser.add_argument('--lr', type=float, default=None, help='Adam learning rate (3e-4)')
    parser.add_argument('--batch-size', type=int, default=None)
    parser.add_argument('--weighting', default=None,
                        help='none | wqbc | sis | qrd (wqbc = SIS/QRD; default from --method)')
    parser.add_argument('--onpolicy-every', type=int, default=None,
                        help='on-policy QBC: roll the student out every N steps (0 = off; '
                             'default 250)')
    parser.add_argument('--onpolicy-episodes', type=int, default=None,
                        help='episodes per on-policy round (default 2)')
    parser.add_argument('--onpolicy-max-steps', type=int, default=None,
                        help='truncate on-policy episodes to N steps (default: full episodes)')
    parser.add_argument('--expert-episodes', type=int, default=10, help='episodes of D_E')
    parser.add_argument('--fp-episodes', type=int, default=10, help='episodes of D_FP')
    parser.add_argument('--eval-episodes', type=int, default=10,
                        help='evaluation episodes after training (0 = skip)')
    parser.add_argument('--config', default=None,
                        help='TrainConfig YAML (e.g. a previous OUT/train.yaml); flags override')
    parser.add_argument('--threads', type=int, default=1, help='torch threads (default 1)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bars')
    parser.add_argument('--json', action='store_true',
                        help='print one JSON object with the results as the last line')
    parser.add_argument('-o', '--out', required=True, help='output directory')


def build_config(args):
    """TrainConfig from --config (if any), the physics defaults and the flags."""
    from qail_ros.qail.config import TrainConfig
    base = dict(PHYSICS_DEFAULTS)
    if args.config:
        base = TrainConfig.from_yaml(args.config).to_dict()
    flags = {'method': args.method, 'bits': args.bits, 'steps': args.steps, 'seed': args.seed,
             'lr': args.lr, 'batch_size': args.batch_size, 'weighting': args.weighting,
             'onpolicy_every': args.onpolicy_every, 'onpolicy_episodes': args.onpolicy_episodes,
             'onpolicy_max_steps': args.onpolicy_max_steps}
    base.update({k: v for k, v in flags.items() if v is not None})
    base['progress'] = not args.no_progress
    extra = dict(base.get('extra') or {})
    extra.update({'task': args.task, 'expert_episodes': args.expert_episodes,
                  'fp_episodes': args.fp_episodes})
    base['extra'] = extra
    return TrainConfig.from_dict(base)


def main(args) -> int:
    import json
    from pathlib import Path

    import numpy as np
    import torch

    from qail_ros.bench.report import emit_json, table
    from qail_ros.physics.tasks import task_spec
    from qail_ros.qail.physics_tasks import (build_qail_data, evaluate_policy, save_trained,
                                             train_on_task)

    task_spec(args.task)
    torch.set_num_threads(max(1, args.threads))
    config = build_config(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from qail_ros.physics.models import load_fp_policy
    teacher = load_fp_policy(args.task)
    data = build_qail_data(args.task, expert_episodes=args.expert_episodes,
                           fp_episodes=args.fp_episodes, seed=config.seed, teacher=teacher)
    result = train_on_task(args.task, config, data=data, teacher=teacher)
    save_trained(result, out / 'policy.safetensors', args.task, meta={'data': data.counts()})
    config.to_yaml(out / 'train.yaml')
    with (out / 'history.jsonl').open('w') as f:
        for rec in result.history:
            f.write(json.dumps(rec) + '\n')
    summary = {'task': args.task, **result.summary(), 'data': data.counts(),
               'policy': str(out / 'policy.safetensors')}
    if args.eval_episodes > 0:
        returns = evaluate_policy(result.student, args.task, args.eval_episodes)
        summary['eval'] = {'episodes': args.eval_episodes, 'mean': float(np.mean(returns)),
                           'std': float(np.std(returns)), 'returns': returns}
    (out / 'summary.json').write_text(json.dumps(summary, indent=2) + '\n')
    steps = config.steps if config.trains else 0
    rows = [[args.task, config.canonical_method, config.bits, steps,
             round(result.seconds, 1),
             summary.get('eval', {}).get('mean', float('nan')),
             summary.get('eval', {}).get('std', float('nan'))]]
    table(f'qail-ros train -> {out}', ['task', 'method', 'bits', 'steps', 'train_s',
                                       'return_mean', 'return_std'], rows)
    if args.json:
        emit_json(summary)
    return 0
