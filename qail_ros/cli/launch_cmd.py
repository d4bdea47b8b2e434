"""`qail-ros launch NAME [name:=value ...]`: run a ROS 2 launch file of qail_ros without ROS 2.

The same file `ros2 launch qail_ros NAME.launch.py` runs: same nodes, parameters and remappings.
Separate processes by default (output prefixed `[node]`, Ctrl-C stops them all), or all nodes in
this process with `--composed`. See docs/launch.md.
"""
from __future__ import annotations

import sys

HELP = 'run a launch file (launch/NAME.launch.py) without ROS 2: qail-ros launch orin_vla'


def add_arguments(parser) -> None:
    parser.add_argument('name', metavar='NAME',
                        help='launch file in the package share launch/ folder: orin_vla or '
                             'orin_vla.launch.py (or a path to a .launch.py file)')
    parser.add_argument('launch_arguments', nargs='*', metavar='name:=value',
                        help='launch arguments, as for ros2 launch (see --show-args)')
    parser.add_argument('--composed', action='store_true',
                        help='run every node in this one process (messages are passed as '
                             'objects, never serialised)')
    parser.add_argument('--duration', type=float, default=None, metavar='S',
                        help='stop after S seconds (0 or absent: run until Ctrl-C)')
    parser.add_argument('--show-args', action='store_true',
                        help='list the launch arguments with their defaults and exit')
    parser.add_argument('--secure', metavar='DIR', default=None,
                        help='run the router and every node on the secure profile in DIR '
                             '(mutual TLS + access control; make it with '
                             'scripts/make_secure_profile.sh DIR; default '
                             '$QAIL_ROS_SECURE_PROFILE; see docs/security.md)')
    parser.add_argument('--print', dest='print_only', action='store_true',
                        help='print the command line of every node and exit')


def main(args) -> int:
    from qail_ros.launching import launcher
    from qail_ros.launching.description import find_launch_file, load_launch_file
    path = find_launch_file(args.name)
    spec = load_launch_file(path, list(args.launch_arguments))
    if args.show_args:
        print(f'Arguments of {path.name} (pass as name:=value):')
        for arg in spec.arguments:
            default = '(required)' if arg.default is None else repr(arg.default)
            print(f"  {arg.name}  default {default}"
                  + (f'  choices {arg.choices}' if arg.choices else ''))
            if arg.description:
                print(f'      {arg.description}')
        return 0
    duration = args.duration if args.duration and args.duration > 0 else None
    if args.print_only:
        import tempfile
        launcher.check_parameter_files(spec)
        with tempfile.TemporaryDirectory(prefix='qail_ros_launch_') as tmp:
            for node in spec.nodes:
                argv = ['python', '-m', launcher.node_module(node)] + launcher.ros_argv(node, tmp)
                print(f'[{node.label}] ' + ' '.join(_quote(a) for a in argv))
                for entry in node.parameters:
                    if isinstance(entry, dict):
                        print(f'    parameters {entry}')
        return 0
    secure = launcher.secure_profile(getattr(args, 'secure', None))
    if args.composed:
        if secure is not None:
            from qail_ros.errors import LaunchError
            raise LaunchError('--secure gives every node its own certificate, which needs one '
                              'process per node: drop --composed')
        return launcher.run_composed(spec, duration_s=duration)
    return launcher.ProcessLauncher(spec, out=sys.stdout, secure=secure).run(
        duration_s=duration)


def _quote(text: str) -> str:
    import shlex
    return shlex.quote(text)
