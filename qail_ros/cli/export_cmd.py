"""`qail-ros export`: a trained policy -> an engine file + manifest that the policy nodes load.

    qail-ros export runs/qail -o models/cartpole --data runs/ds        # W4A4 student, int8
    qail-ros export models/physics/cartpole-balance/fp_policy.safetensors -o models/cartpole
    qail-ros export fp --task cartpole-balance -o models/cartpole    # the shipped FP policy
    qail-ros export runs/swingup -o engines     # a teacher directory (train-expert): its FP

POLICY is a `qail-ros train` output directory or policy.safetensors (a QAIL student: W4A4 /
W8A8 / W3A3 / W2A4 -> the 'torch-int8' back end) or an FP MLPPolicy file (-> 'torch', fp32).
Writes OUT/NAME.safetensors and OUT/NAME.safetensors.json (architecture, precision, back end,
input spec, normalisation, source policy and data set hashes), after checking that the engine,
loaded as the state_policy node loads it, gives the source model's actions.
"""
from __future__ import annotations

HELP = 'export a trained policy to an engine file + manifest (for state_policy)'


def add_arguments(parser):
    parser.add_argument('policy', help="qail-ros train output (dir or policy.safetensors), an "
                                       "FP MLPPolicy .safetensors, a teacher directory "
                                       "(qail-ros train-expert: its FP policy), or 'fp' with "
                                       "--task / --teacher")
    parser.add_argument('--task', default=None, help="physics task of POLICY 'fp'")
    parser.add_argument('--teacher', default=None,
                        help="teacher directory of POLICY 'fp' (default: the shipped one)")
    parser.add_argument('-o', '--out', required=True, help='directory for the engine files')
    parser.add_argument('--name', default=None,
                        help='engine file name without extension (default TASK_PRECISION)')
    parser.add_argument('--data', default=None,
                        help='the data set it was trained on: its hash and statistics go into '
                             'the manifest, its states into the export check')
    parser.add_argument('--json', action='store_true',
                        help='print the manifest as one JSON object on the last line')


def main(args) -> int:
    import json

    from qail_ros.errors import ParameterError
    from qail_ros.physics.export import describe, export_policy
    policy = args.policy
    if policy == 'fp':
        if not args.task and not args.teacher:
            raise ParameterError("policy 'fp' is the FP policy of a task: add --task (shipped) "
                                 'or --teacher DIR')
        from qail_ros.physics.models import MissingModelError, shipped_tasks, teacher_dir
        policy = teacher_dir(args.task, args.teacher) / 'fp_policy.safetensors'
        if not policy.is_file():
            raise MissingModelError(f'no FP policy at {policy}: train one with qail-ros '
                                    f'train-expert -o DIR (shipped: {shipped_tasks()})')
    elif args.task:
        raise ParameterError("--task goes with policy 'fp' only (a trained policy knows its "
                             'task)')
    engine, manifest = export_policy(policy, args.out, name=args.name, dataset=args.data)
    print(f'wrote {engine} and {engine.name}.json')
    print(describe(manifest))
    print(f'run it: qail-ros launch physics_drive engine:={engine} task:='
          f"{manifest.details.get('task') or 'TASK'}")
    if args.json:
        print(json.dumps(manifest.to_dict()))
    return 0
