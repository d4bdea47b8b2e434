"""`qail-ros train-fp`: clone a teacher directory's expert into its FP MLP policy.

    qail-ros train-fp --teacher runs/swingup                  # after train-expert --no-fp
    qail-ros train-fp --teacher runs/swingup --steps 40000 --hidden 512

Reads TEACHER/expert.safetensors, writes TEACHER/fp_policy.safetensors and
TEACHER/manifest.json (dims, architecture, training, returns of the expert, the FP policy and a
random policy over --eval-episodes episodes on seeds 0..). The expected time is printed first.
"""
from __future__ import annotations

from qail_ros.cli.common import (add_run_arguments, add_task_argument, add_teacher_argument,
                                 command_line, start_training)

HELP = "behaviour-clone a teacher directory's expert into its FP MLP policy"


def add_arguments(parser):
    add_teacher_argument(parser, 'its expert is cloned into its FP policy', required=True)
    add_task_argument(parser, "the teacher's")
    parser.add_argument('--episodes', type=int, default=20, help='clean demonstrations (20)')
    parser.add_argument('--noise-episodes', type=int, default=20,
                        help='demonstrations with Gaussian action noise, clean labels (20)')
    parser.add_argument('--noise', type=float, default=0.2, help='action noise std (0.2)')
    parser.add_argument('--steps', type=int, default=20000, help='BC steps of batch 256')
    parser.add_argument('--hidden', type=int, default=256, help='MLP width (256; paper 2048)')
    parser.add_argument('--layers', type=int, default=3, help='hidden layers (3)')
    parser.add_argument('--lr', type=float, default=1e-3)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--eval-episodes', type=int, default=10)
    add_run_arguments(parser, json_help='print the manifest as one JSON object on the last line')


def main(args) -> int:
    from qail_ros.report import emit_json, table
    from qail_ros.physics import teacher as T
    from qail_ros.physics.models import teacher_task

    start_training(args)
    task = args.task or teacher_task(args.teacher)
    eta = T.estimate_fp_seconds(task, episodes=args.episodes,
                                noise_episodes=args.noise_episodes, steps=args.steps,
                                hidden=args.hidden, layers=args.layers,
                                eval_episodes=args.eval_episodes)
    print(f'FP MLP ({args.layers} x {args.hidden}) for {task} by behaviour cloning: '
          f'{args.episodes} + {args.noise_episodes} demonstrations, {args.steps} steps; expected '
          f'{T.fmt_seconds(eta)}', flush=True)
    m = T.train_fp(args.teacher, task, episodes=args.episodes,
                   noise_episodes=args.noise_episodes, noise=args.noise, hidden=args.hidden,
                   layers=args.layers, steps=args.steps, lr=args.lr, seed=args.seed,
                   eval_episodes=args.eval_episodes, command=command_line())
    rows = [[task, name, m[key]['return']['mean'], m[key]['return']['std']]
            for name, key in (('expert', 'expert'), ('FP MLP (BC)', 'fp_policy'),
                              ('random', 'random_policy'))]
    table(f'qail-ros train-fp -> {args.teacher}', ['task', 'policy', 'mean', 'std'], rows)
    if args.json:
        emit_json(m)
    return 0
