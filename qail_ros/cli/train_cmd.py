"""`qail-ros train`: quantize an FP policy and fine-tune it with QAIL / QBC / wQBC / LPPD.

    qail-ros train --task walker-stand --method qail_qbc --bits w4a4 --steps 2000 -o runs/ws
    qail-ros train --teacher FP_MODEL --data DATASET --config config/qail_physics.yaml -o OUT

The first form makes D_QAIL in simulation (rollouts of the task's shipped expert and FP policy).
The second is the pipeline of recorded data: DATASET (`qail-ros dataset build` of fp_recorder
bags, the FP policy's rollouts) is D_FP, --expert-data adds recorded demonstrations as D_E, the
teacher is FP_MODEL (an MLPPolicy file or the fp32 engine `qail-ros export` made of it), and the
task (for on-policy QBC rollouts and the final evaluation) is --task or the data set's task.
Both write OUT/policy.safetensors (the student; `qail-ros eval --policy OUT`), OUT/train.yaml (the
TrainConfig, reusable with --config), OUT/history.jsonl (losses) and OUT/summary.json, then
evaluates the student over --eval-episodes episodes.
"""
from __future__ import annotations

from qail_ros.cli.common import (add_data_arguments, add_run_arguments, add_scale_arguments,
                                 add_task_argument, add_teacher_argument, start_training)

HELP = 'train a quantized policy with QAIL (+QBC / wQBC) on a physics task'

#: physics defaults (METHOD.md: Adam lr 3e-4 for the MLP policies); steps fit a CPU budget.
PHYSICS_DEFAULTS = {'steps': 2000, 'lr': 3e-4, 'batch_size': 256, 'onpolicy_every': 250,
                    'onpolicy_episodes': 2}
#: flags that override a TrainConfig field (unset: the --config value, else PHYSICS_DEFAULTS,
#: else TrainConfig's default): field, type, help.
CONFIG_FLAGS = (
    ('method', str, 'ptq_rtn | qat (= qail) | qbc | qail_qbc | qail_wqbc | lppd (default '
                    'qail_qbc, or the --config value)'),
    ('bits', str, 'w4a4 (default), w3a3, w8a8, w4a16 ...'),
    ('steps', int, 'optimiser steps (default 2000)'),
    ('seed', int, 'training seed (default 0)'),
    ('lr', float, 'Adam learning rate (3e-4)'),
    ('batch_size', int, 'global batch of one optimiser step (default 256)'),
    ('weighting', str, 'none | wqbc | sis | qrd (wqbc = SIS/QRD; default from --method)'),
    ('onpolicy_every', int, 'on-policy QBC: roll the student out every N steps (0 = off; '
                            'default 250)'),
    ('onpolicy_episodes', int, 'episodes per on-policy round (default 2)'),
    ('onpolicy_max_steps', int, 'truncate on-policy episodes to N steps (default: full '
                                'episodes)'),
)


def add_arguments(parser):
    add_task_argument(parser, "the task of --data's recordings or of the --teacher directory")
    add_teacher_argument(parser, 'its FP policy is the teacher, its expert gives D_E; or an '
                                 'MLPPolicy file or fp32 engine as the teacher (default: the '
                                 "task's shipped FP policy and expert)")
    add_data_arguments(parser)
    for field, kind, text in CONFIG_FLAGS:
        parser.add_argument('--' + field.replace('_', '-'), type=kind, default=None, help=text)
    parser.add_argument('--expert-episodes', type=int, default=None,
                        help='simulated episodes of D_E (default 10; 0 with --data)')
    parser.add_argument('--fp-episodes', type=int, default=None,
                        help='simulated episodes of D_FP (default 10; 0 with --data)')
    parser.add_argument('--eval-episodes', type=int, default=10,
                        help='evaluation episodes after training (0 = skip)')
    parser.add_argument('--config', default=None,
                        help='TrainConfig YAML (e.g. a previous OUT/train.yaml); flags override')
    add_run_arguments(parser, out='output directory', progress=True)
    add_scale_arguments(parser)


def _episodes(args) -> tuple[int, int]:
    """(expert, fp) simulated episodes: 10 each, none by default when --data is given."""
    default = 0 if args.data else 10
    return (default if args.expert_episodes is None else args.expert_episodes,
            default if args.fp_episodes is None else args.fp_episodes)


def resolve_task(args) -> str | None:
    """--task, else the task the data set was recorded on, else the teacher's."""
    from pathlib import Path

    from qail_ros.errors import ParameterError
    from qail_ros.physics.tasks import check_task
    if args.task:
        return check_task(args.task)
    if args.data:
        from qail_ros.physics.qail_tasks import dataset_task
        task = dataset_task(args.data)
        if task:
            return task
        return None
    if args.teacher and Path(args.teacher).is_dir():
        from qail_ros.physics.models import teacher_task
        return teacher_task(args.teacher)
    raise ParameterError('name the task (--task walker-stand), a teacher directory (--teacher '
                         'DIR) or give recorded data (--data DATASET)')


def build_config(args):
    """TrainConfig from --config (if any), the physics defaults and the flags."""
    from pathlib import Path

    from qail_ros.qail.config import TrainConfig
    base = dict(PHYSICS_DEFAULTS)
    if args.config:
        base = TrainConfig.from_yaml(args.config).to_dict()
    flags = {field: getattr(args, field) for field, _, _ in CONFIG_FLAGS}
    base.update({k: v for k, v in flags.items() if v is not None})
    scale = {k: getattr(args, k, None) for k in ('device', 'precision', 'grad_accum')}
    base.update({k: v for k, v in scale.items() if v is not None})
    base['checkpoint_every'] = getattr(args, 'checkpoint_every', 0) or 0
    base['checkpoint_dir'] = str(Path(args.out) / 'checkpoints')
    base['resume'] = getattr(args, 'resume', None)
    base['progress'] = not args.no_progress
    extra = dict(base.get('extra') or {})
    expert_episodes, fp_episodes = _episodes(args)
    extra.update({'task': getattr(args, 'resolved_task', args.task),
                  'expert_episodes': expert_episodes, 'fp_episodes': fp_episodes})
    if args.data:
        extra.update({'data': str(args.data), 'expert_data': args.expert_data,
                      'split': args.split})
    base['extra'] = extra
    return TrainConfig.from_dict(base)


def main(args) -> int:
    import json
    from pathlib import Path

    import numpy as np
    import torch

    from qail_ros.report import emit_json, table
    from qail_ros.qail.data import ImitationData
    from qail_ros.physics.qail_tasks import (build_qail_data, data_from_datasets,
                                             evaluate_policy, load_teacher, save_trained,
                                             train_on_task)

    task = args.resolved_task = resolve_task(args)
    start_training(args)
    config = build_config(args)
    if task is None and config.onpolicy_every > 0:
        print('note: the data set names no physics task: on-policy QBC rollouts are off '
              '(pass --task to enable them)')
        config.onpolicy_every = 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.teacher:
        teacher = load_teacher(args.teacher)
    elif task:
        from qail_ros.physics.models import load_fp_policy
        teacher = load_fp_policy(task)
    else:
        from qail_ros.errors import ParameterError
        raise ParameterError('no teacher: pass --teacher FP_MODEL (the data set names no '
                             'physics task whose shipped FP policy could be used)')
    expert_episodes, fp_episodes = _episodes(args)
    parts = []
    if args.data or args.expert_data:
        parts.append(data_from_datasets(args.data, args.expert_data, split=args.split))
    if expert_episodes or fp_episodes:
        if not task:
            from qail_ros.errors import ParameterError
            raise ParameterError('--expert-episodes / --fp-episodes simulate the task: pass '
                                 '--task')
        teacher_dir = args.teacher if args.teacher and Path(args.teacher).is_dir() else None
        # default episode counts: at least 10000 states per source (bench physics' rule)
        min_states = 10000 if args.expert_episodes is None and args.fp_episodes is None else 0
        parts.append(build_qail_data(task, expert_episodes=expert_episodes,
                                     fp_episodes=fp_episodes, seed=config.seed,
                                     teacher=teacher, teacher_dir=teacher_dir,
                                     min_states=min_states))
    if not parts:
        from qail_ros.errors import ParameterError
        raise ParameterError('no training data: give --data DATASET (recorded rollouts) or '
                             'simulated episodes (--expert-episodes / --fp-episodes > 0)')
    data = parts[0] if len(parts) == 1 else ImitationData.concat(parts)
    data.ids = torch.arange(len(data), dtype=torch.int64)
    from qail_ros.training.distributed import TrainingInterrupted, setup, teardown
    dist = setup(config.device)
    if task and dist.is_main:
        from qail_ros.physics.teacher import fmt_seconds
        from qail_ros.physics.qail_tasks import estimate_train_seconds, measure_costs
        eta = estimate_train_seconds(config, measure_costs(task, teacher, config),
                                     eval_episodes=args.eval_episodes)
        print(f'{config.canonical_method} {config.bits}, {config.steps} steps on {len(data)} '
              f'samples: expected {fmt_seconds(eta)}', flush=True)
    try:
        result = train_on_task(task, config, data=data, teacher=teacher)
    except TrainingInterrupted as exc:
        if dist.is_main:
            print(f'qail-ros train: {exc}')
        teardown()
        return 130
    if not dist.is_main:         # under torchrun: rank 0 alone writes and evaluates
        teardown()
        return 0
    meta = {'data': data.counts()}
    if args.data:
        from qail_ros.physics.export import dataset_hash
        meta.update(dataset=str(args.data), dataset_hash=dataset_hash(args.data),
                    split=args.split)
    if args.teacher:
        meta['teacher'] = str(args.teacher)
    save_trained(result, out / 'policy.safetensors', task or '', meta=meta)
    config.to_yaml(out / 'train.yaml')
    with (out / 'history.jsonl').open('w') as f:
        for rec in result.history:
            f.write(json.dumps(rec) + '\n')
    summary = {'task': task, **result.summary(), 'data': data.counts(),
               'policy': str(out / 'policy.safetensors'), 'processes': dist.world}
    if args.eval_episodes > 0 and task:
        returns = evaluate_policy(result.student, task, args.eval_episodes)
        summary['eval'] = {'episodes': args.eval_episodes, 'mean': float(np.mean(returns)),
                           'std': float(np.std(returns)), 'returns': returns}
    (out / 'summary.json').write_text(json.dumps(summary, indent=2) + '\n')
    steps = config.steps if config.trains else 0
    rows = [[task or '-', config.canonical_method, config.bits, steps, len(data),
             round(result.seconds, 1),
             summary.get('eval', {}).get('mean', float('nan')),
             summary.get('eval', {}).get('std', float('nan'))]]
    table(f'qail-ros train -> {out}', ['task', 'method', 'bits', 'steps', 'samples', 'train_s',
                                       'return_mean', 'return_std'], rows)
    print(f'next: qail-ros export {out} -o DIR' + (f' --data {args.data}' if args.data else ''))
    if args.json:
        emit_json(summary)
    teardown()
    return 0
