"""Arguments that several `qail-ros` commands share, each written once here."""
from __future__ import annotations

__all__ = ['JSON_HELP', 'add_data_arguments', 'add_run_arguments', 'add_scale_arguments',
           'add_task_argument', 'add_teacher_argument', 'command_line', 'start_training']

JSON_HELP = 'print one JSON object with the results as the last line'


def add_run_arguments(parser, *, out: str | None = None, progress: bool = False,
                      json_help: str = JSON_HELP) -> None:
    """--threads and --json of a command that computes; with `out` (its help) the required
    -o/--out, with `progress` --no-progress."""
    parser.add_argument('--threads', type=int, default=1, help='torch threads (default 1)')
    if progress:
        parser.add_argument('--no-progress', action='store_true', help='no progress bars')
    parser.add_argument('--json', action='store_true', help=json_help)
    if out is not None:
        parser.add_argument('-o', '--out', required=True, help=out)


def add_task_argument(parser, default: str) -> None:
    """--task: a physics task (every kind `check_task` takes); unset, it is `default`."""
    from qail_ros.physics.tasks import TASK_HELP
    parser.add_argument('--task', default=None, help=f'{TASK_HELP} (default: {default})')


def add_teacher_argument(parser, use: str, *, required: bool = False) -> None:
    """--teacher: a teacher directory (`qail-ros train-expert -o DIR`), used as `use` says."""
    parser.add_argument('--teacher', required=required, default=None,
                        help=f'teacher directory (qail-ros train-expert -o DIR): {use}')


def add_data_arguments(parser, *, required: bool = False) -> None:
    """--data (D_FP), --expert-data (D_E) and --split: recorded data sets of a trainer."""
    parser.add_argument('--data', required=required, default=None,
                        help="data set of the FP policy's recorded rollouts (D_FP; qail-ros "
                             'dataset build)')
    parser.add_argument('--expert-data', default=None,
                        help='data set of recorded expert demonstrations (D_E)')
    parser.add_argument('--split', default='train', choices=('train', 'val', 'all'),
                        help='episodes of --data / --expert-data to train on (default train)')


def add_scale_arguments(parser, *, checkpoint_every: int = 500) -> None:
    """--device / --precision / --grad-accum / --checkpoint-every / --resume, shared by the
    trainers' commands (docs/training.md); torchrun runs any of them unchanged."""
    g = parser.add_argument_group('devices, precision, checkpoints (docs/training.md)')
    g.add_argument('--device', default=None, choices=('cpu', 'cuda', 'auto'),
                   help='cpu (default), cuda (under torchrun: cuda:LOCAL_RANK) or auto')
    g.add_argument('--precision', default=None, choices=('fp32', 'bf16'),
                   help='fp32 (default) or bf16 autocast of the forward')
    g.add_argument('--grad-accum', type=int, default=None,
                   help='micro-batches per step (the batch size stays the global batch)')
    g.add_argument('--checkpoint-every', type=int, default=checkpoint_every,
                   help=f'checkpoint OUT/checkpoints every N steps (default {checkpoint_every}; '
                        '0 = only when stopped by SIGTERM / Ctrl-C)')
    g.add_argument('--resume', default=None,
                   help='continue from a checkpoint (OUT/checkpoints or one step-N in it; '
                        "'auto' = OUT/checkpoints/latest if there is one); torchrun elastic "
                        'restarts continue from the latest by themselves')


def command_line() -> str:
    """This process's command line as `qail-ros ...` (recorded in what a command writes)."""
    import shlex
    import sys
    return 'qail-ros ' + ' '.join(shlex.quote(a) for a in sys.argv[1:])


def start_training(args) -> None:
    """Start-up of a training command: torch threads from --threads, and training progress
    (the trainers' module loggers) on stderr, so stdout keeps the tables and the --json line."""
    import torch

    from qail_ros.training.logs import show_progress
    torch.set_num_threads(max(1, args.threads))
    show_progress()
