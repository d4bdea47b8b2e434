"""`qail-ros train-expert`: a SAC expert for any task, then its FP MLP (the teacher directory).

    qail-ros train-expert --task cartpole-swingup --minutes 20 -o runs/swingup
    qail-ros train-expert --task gym:InvertedDoublePendulum-v5 --steps 60000 -o runs/idp
    qail-ros train-expert -o runs/swingup --resume --minutes 10     # continue a stopped run

Writes OUT/expert.safetensors (the best SAC actor by periodic evaluation), OUT/checkpoint/
(SAC networks, optimisers, replay buffer and random state at the last evaluation: --resume
continues from there), OUT/expert_log.jsonl, then clones the expert into
OUT/fp_policy.safetensors and writes OUT/manifest.json (as `qail-ros train-fp --teacher OUT`;
--no-fp skips it). Every other command takes the result as `--teacher OUT`. Before each step
the expected time on this machine is printed.
"""
from __future__ import annotations

from qail_ros.cli.common import (add_run_arguments, add_task_argument, command_line,
                                 start_training)

HELP = 'train a SAC expert (and its FP MLP by behaviour cloning) for any physics task'


def add_arguments(parser):
    add_task_argument(parser, "with --resume, the run's")
    budget = parser.add_argument_group('budget (default: 30 minutes)')
    budget.add_argument('--minutes', type=float, default=None, help='wall-clock budget of SAC')
    budget.add_argument('--steps', type=int, default=None, help='environment steps of SAC')
    budget.add_argument('--target-return', type=float, default=None,
                        help='stop once an evaluation reaches this return')
    sac = parser.add_argument_group('SAC')
    sac.add_argument('--action-repeat', type=int, default=None,
                     help='2 on DeepMind Control, 1 elsewhere (default)')
    sac.add_argument('--seed', type=int, default=0)
    sac.add_argument('--start-steps', type=int, default=None,
                     help='random env steps first (5000, a tenth of a small --steps)')
    sac.add_argument('--eval-every', type=int, default=None, help='env steps between evaluations')
    sac.add_argument('--eval-episodes', type=int, default=5)
    sac.add_argument('--hidden', type=int, default=256, help='width of actor and critics (256)')
    sac.add_argument('--lr', type=float, default=3e-4)
    sac.add_argument('--batch', type=int, default=256)
    sac.add_argument('--resume', action='store_true',
                     help='continue the run in OUT from its checkpoint (the budget flags give '
                          'the new budget: --minutes more, or --steps in total)')
    fp = parser.add_argument_group('FP policy (behaviour cloning, as qail-ros train-fp)')
    fp.add_argument('--no-fp', action='store_true', help='train the expert only')
    fp.add_argument('--fp-steps', type=int, default=20000, help='BC steps (20000)')
    fp.add_argument('--fp-episodes', type=int, default=20, help='clean demonstrations (20)')
    fp.add_argument('--fp-noise-episodes', type=int, default=20,
                    help='demonstrations with action noise, clean labels (20)')
    fp.add_argument('--fp-hidden', type=int, default=256, help='FP MLP width (256)')
    fp.add_argument('--fp-eval-episodes', type=int, default=10,
                    help='episodes evaluating expert, FP policy and random policy (10)')
    add_run_arguments(parser, out='teacher directory to write', progress=True)


def main(args) -> int:
    import json
    from pathlib import Path

    from qail_ros.report import emit_json, table
    from qail_ros.errors import ParameterError
    from qail_ros.physics import teacher as T
    from qail_ros.physics.tasks import check_task

    start_training(args)
    out = Path(args.out)
    saved = out / 'expert_settings.json'
    if args.resume:
        if not saved.is_file():
            raise ParameterError(f'--resume: {out} holds no SAC run (no {saved.name}); start '
                                 'without --resume')
        s = json.loads(saved.read_text())
        if args.task and args.task != s['task']:
            raise ParameterError(f'--resume: {out} is a run on {s["task"]}, not {args.task}')
        if args.minutes is not None or args.steps is not None:
            s['minutes'], s['steps'] = args.minutes, args.steps
        if args.target_return is not None:
            s['target_return'] = args.target_return
        task = s['task']
    else:
        if not args.task:
            raise ParameterError('name the task: --task walker-stand, --task gym:Pendulum-v1, '
                                 '--task my_pkg.envs:make_env')
        task = check_task(args.task)
        s = T.expert_settings(task, minutes=args.minutes, steps=args.steps,
                              action_repeat=args.action_repeat, seed=args.seed,
                              start_steps=args.start_steps, eval_every=args.eval_every,
                              eval_episodes=args.eval_episodes,
                              target_return=args.target_return, hidden=args.hidden, lr=args.lr,
                              batch=args.batch)
    eta = T.estimate_expert_seconds(task, s)
    budget = ' or '.join(x for x in (f'{s["minutes"]:g} min' if s['minutes'] else '',
                                     f'{s["steps"]} env steps' if s['steps'] else '') if x)
    print(f'1/2 SAC expert for {task}: budget {budget}, action repeat {s["action_repeat"]}, '
          f'evaluation every {s["eval_every"]} env steps; expected {T.fmt_seconds(eta)} -> '
          f'{out}', flush=True)
    out.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(s, indent=1) + '\n')
    res = T.train_expert(task, out, s, resume=args.resume, progress=not args.no_progress)
    print(f'expert: best evaluation {res["best_eval"]:.1f} after {res["env_steps"]} env steps '
          f'({res["minutes"]:.1f} min, {res["reason"]}) -> {res["expert"]}', flush=True)
    result = {'task': task, 'expert': {k: res[k] for k in ('env_steps', 'best_eval', 'minutes',
                                                           'reason', 'history')}}
    if not args.no_fp:
        eta = T.estimate_fp_seconds(task, episodes=args.fp_episodes,
                                    noise_episodes=args.fp_noise_episodes, steps=args.fp_steps,
                                    hidden=args.fp_hidden, layers=3,
                                    eval_episodes=args.fp_eval_episodes)
        print(f'2/2 FP MLP (3 x {args.fp_hidden}) by behaviour cloning: '
              f'{args.fp_episodes} + {args.fp_noise_episodes} demonstrations, {args.fp_steps} '
              f'steps; expected {T.fmt_seconds(eta)}', flush=True)
        manifest = T.train_fp(out, task, episodes=args.fp_episodes,
                              noise_episodes=args.fp_noise_episodes, steps=args.fp_steps,
                              hidden=args.fp_hidden, eval_episodes=args.fp_eval_episodes,
                              command=command_line())
        result['manifest'] = str(out / 'manifest.json')
        result['fp'] = manifest['fp_policy']['return']
        result['expert_return'] = manifest['expert']['return']
        result['random'] = manifest['random_policy']['return']
        table(f'qail-ros train-expert -> {out}', ['task', 'policy', 'mean', 'std'],
              [[task, 'expert (SAC)', result['expert_return']['mean'],
                result['expert_return']['std']],
               [task, 'FP MLP (BC)', result['fp']['mean'], result['fp']['std']],
               [task, 'random', result['random']['mean'], result['random']['std']]])
        print(f'next: qail-ros bench physics --teacher {out} --quick, or qail-ros train '
              f'--teacher {out} -o STUDENT')
    else:
        print(f'next: qail-ros train-fp --teacher {out}')
    if args.json:
        emit_json(result)
    return 0
