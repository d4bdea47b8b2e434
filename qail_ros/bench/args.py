"""The options every training benchmark shares: --quick, --seeds, --episodes, --out, --threads.

    def add_arguments(parser):
        add_run_arguments(parser, name='physics', quick='one task, one seed, 2 episodes',
                          seeds=3, episodes='evaluation episodes (10)')
        parser.add_argument(...)        # the bench's own options
"""
from __future__ import annotations

from qail_ros.errors import ParameterError

__all__ = ['add_run_arguments', 'choose']


def add_run_arguments(parser, *, name: str, quick: str, seeds: str, episodes: str,
                      out: str | None = None) -> None:
    """Add the shared options; `quick` / `seeds` / `episodes` / `out` are their help texts
    (what --quick runs, what a seed trains, what an episode is), OUT defaults to
    bench-results/NAME."""
    parser.add_argument('--quick', action='store_true', help=f'smoke test: {quick}')
    parser.add_argument('--seeds', type=int, default=None, help=seeds)
    parser.add_argument('--episodes', type=int, default=None, help=episodes)
    parser.add_argument('--out', default=f'bench-results/{name}',
                        help=out or f'output directory of {name}.{{json,md}}')
    parser.add_argument('--threads', type=int, default=1, help='torch threads (default 1)')


def choose(option: str, given: list[str], allowed, default) -> list[str]:
    """The values of a repeatable / comma-separated option (`given`, already split; empty =
    `default`), each one of `allowed`: else a ParameterError naming the option and the
    choices."""
    chosen = list(given) or list(default)
    bad = [v for v in chosen if v not in allowed]
    if bad:
        raise ParameterError(f'{option} {bad}: choose among {",".join(allowed)}')
    return chosen
