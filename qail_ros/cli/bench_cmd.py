"""`qail-ros bench NAME`: benchmarks that measure what they compare in one run.

Each benchmark prints a readable table and, with `--json`, one JSON object as its last line.
A benchmark module defines `HELP`, `add_arguments(parser)` and `main(args) -> int`.
"""
from __future__ import annotations

import importlib

HELP = 'run a benchmark (table; --json for one JSON object on the last line)'

BENCHES = {
    'transport': 'qail_ros.bench.transport',
    'recorder': 'qail_ros.bench.recorder',
    'physics': 'qail_ros.bench.physics',
    'cilrs': 'qail_ros.bench.cilrs',
    'driving': 'qail_ros.bench.driving',
    'decode': 'qail_ros.bench.decode',
    'manipulation': 'qail_ros.bench.manipulation',
    'monitor': 'qail_ros.bench.monitor',
    'quant': 'qail_ros.bench.quant',
    'safety': 'qail_ros.bench.safety',
    'train': 'qail_ros.bench.train',
}


def add_arguments(parser):
    sub = parser.add_subparsers(dest='bench', metavar='NAME')
    for name, module_name in BENCHES.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        p.add_argument('--json', action='store_true',
                       help='print one JSON object with the results as the last line')
        module.add_arguments(p)
        p.set_defaults(_bench_main=module.main)
    parser.set_defaults(_bench_parser=parser)


def main(args) -> int:
    if not getattr(args, '_bench_main', None):
        args._bench_parser.print_help()
        return 2
    return int(args._bench_main(args) or 0)
