"""The options and start-up every training command shares (train, train-vla, train-expert,
train-fp): --threads, --no-progress, --json, -o/--out; torch threads and progress logging.
Not a command itself (cli/__init__.py COMMANDS lists those)."""
from __future__ import annotations

__all__ = ['add_train_options', 'start_training']


def add_train_options(parser, *, out: str | None = 'output directory',
                      progress: str | None = 'no progress bars',
                      json: str = 'print one JSON object with the results as the last line'
                      ) -> None:
    """Add the shared options; `out` / `progress` are their help texts (None: the command
    has no -o / no --no-progress)."""
    parser.add_argument('--threads', type=int, default=1, help='torch threads (default 1)')
    if progress is not None:
        parser.add_argument('--no-progress', action='store_true', help=progress)
    parser.add_argument('--json', action='store_true', help=json)
    if out is not None:
        parser.add_argument('-o', '--out', required=True, help=out)


def start_training(args) -> None:
    """torch threads from --threads; training progress (module loggers) to stderr."""
    import torch

    from qail_ros.training.logs import show_progress
    torch.set_num_threads(max(1, args.threads))
    show_progress()
