"""`qail-ros eval`: closed-loop returns of a policy on a physics task.

    qail-ros eval --task walker-stand --policy runs/ws            # a `qail-ros train` output
    qail-ros eval --task walker-stand --policy fp                  # the shipped FP policy
    qail-ros eval --task walker-stand --policy expert --episodes 10
    qail-ros eval --teacher runs/swingup --policy fp       # a qail-ros train-expert output
"""
from __future__ import annotations

from qail_ros.cli.common import add_run_arguments, add_task_argument, add_teacher_argument

HELP = 'evaluate a policy (trained student, FP policy file, fp, expert) on a physics task'


def add_arguments(parser):
    add_task_argument(parser, 'the task the policy or --teacher was trained on')
    parser.add_argument('--policy', required=True,
                        help="a qail-ros train directory or .safetensors file, a teacher "
                             "directory (its FP policy), or 'fp' / 'expert' (of --teacher, or "
                             "the task's shipped models)")
    add_teacher_argument(parser, "whose 'fp' / 'expert' --policy means")
    parser.add_argument('--episodes', type=int, default=10, help='episodes (default 10)')
    parser.add_argument('--seed', type=int, default=0,
                        help='first environment seed (episode i uses seed + i)')
    add_run_arguments(parser)


def main(args) -> int:
    import numpy as np
    import torch

    from qail_ros.report import emit_json, table
    from qail_ros.errors import ParameterError
    from qail_ros.physics.tasks import check_task
    from qail_ros.physics.qail_tasks import evaluate_policy, load_any_policy

    torch.set_num_threads(max(1, args.threads))
    if args.episodes < 1:
        raise ParameterError(f'--episodes must be >= 1, got {args.episodes}')
    info = {}
    if args.policy in ('fp', 'expert'):
        from qail_ros.physics.models import load_expert, load_fp_policy, teacher_task
        if args.teacher and not args.task:
            args.task = teacher_task(args.teacher)
        if not args.task:
            raise ParameterError(f'--policy {args.policy} needs --task or --teacher DIR')
        policy = (load_fp_policy(args.task, args.teacher) if args.policy == 'fp'
                  else load_expert(args.task, teacher=args.teacher))
        info = {'format': args.policy}
    else:
        policy, info = load_any_policy(args.policy)
    task = args.task or info.get('task')
    if not task:
        raise ParameterError(f'{args.policy} does not name its task: pass --task')
    check_task(task)
    if info.get('task') and info['task'] != task:
        print(f'note: policy trained on {info["task"]}, evaluated on {task}')
    returns = evaluate_policy(policy, task, args.episodes, args.seed)
    cfg = info.get('config') or {}
    result = {'task': task, 'policy': args.policy, 'method': cfg.get('method', info.get('format')),
              'bits': cfg.get('bits', 'fp32'), 'episodes': args.episodes, 'seed': args.seed,
              'mean': float(np.mean(returns)), 'std': float(np.std(returns)),
              'returns': returns}
    table(f'qail-ros eval {task}', ['policy', 'method', 'bits', 'episodes', 'mean', 'std'],
          [[args.policy, result['method'], result['bits'], args.episodes, result['mean'],
            result['std']]])
    if args.json:
        emit_json(result)
    return 0
