"""`qail-ros`: the command line of qail_ros.

Each sub-command lives in its own module that defines `HELP`, `add_arguments(parser)` and
`main(args) -> int`, and keeps heavy imports (torch, zenoh) inside `main`, so `--help` is fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ['main', 'COMMANDS', 'build_parser']

#: command name -> module. A module that is not there (yet) is simply not offered.
COMMANDS = {
    'launch': 'qail_ros.cli.launch_cmd',
    'router': 'qail_ros.cli.router_cmd',
    'topic': 'qail_ros.cli.topic_cmd',
    'bag': 'qail_ros.cli.bag_cmd',
    'bench': 'qail_ros.cli.bench_cmd',
    'train': 'qail_ros.cli.train_cmd',
    'train-vla': 'qail_ros.cli.train_vla_cmd',
    'eval': 'qail_ros.cli.eval_cmd',
    'dataset': 'qail_ros.cli.dataset_cmd',
    'export': 'qail_ros.cli.export_cmd',
    'monitor': 'qail_ros.cli.monitor_cmd',
    'replay': 'qail_ros.cli.replay_cmd',
    'verify': 'qail_ros.cli.verify_cmd',
    'train-expert': 'qail_ros.cli.train_expert_cmd',
    'train-fp': 'qail_ros.cli.train_fp_cmd',
    'driving': 'qail_ros.cli.driving_cmd',
}


def _load(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    from qail_ros import __version__
    parser = argparse.ArgumentParser(
        prog='qail-ros',
        description='Quantized imitation-learning policies on ROS 2: launch nodes, record and '
                    'build data sets, train (QAIL + QBC), export engines, benchmark, monitor.')
    parser.add_argument('--version', action='version', version=f'qail-ros {__version__}')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    for name, module_name in COMMANDS.items():
        module = _load(module_name)
        if module is None:
            continue
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_main=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    # `name:=value` launch arguments after an option (`launch NAME --composed a:=b`): argparse
    # does not resume a positional list after an option, so collect them here.
    if extra and hasattr(args, 'launch_arguments') and all(':=' in e for e in extra):
        args.launch_arguments = list(args.launch_arguments) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, '_main', None):
        parser.print_help()
        return 2
    try:
        return int(args._main(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - turn our errors into one clear line
        from qail_ros.errors import QailRosError
        if isinstance(exc, QailRosError):
            print(f'qail-ros: error: {exc}', file=sys.stderr)
            return 2
        raise


if __name__ == '__main__':
    sys.exit(main())
