"""A stand-in for the subset of `launch`, `launch_ros` and `ament_index_python` that qail_ros
launch files use, so the embedded launcher can evaluate a genuine ROS 2 launch file on a machine
without ROS 2.

The subset, with the signatures of the real packages:

    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, Shutdown
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node
    from ament_index_python.packages import get_package_share_directory

`shim_modules()` builds fresh module objects for those names; `installed()` puts them into
`sys.modules` only while a launch file is evaluated and restores whatever was there before (the
real packages included), so the shim never leaks into the rest of the process.
`Node(..., on_exit=Shutdown())` is understood: when that node exits, the whole launch stops (a
simulator bridge that has run its episodes). The objects only record what the launch file
asked for; `qail_ros.launching.description` turns them into node
specs. Anything outside the subset fails with a `LaunchError` that names it, rather than being
silently ignored: a launch file that needs more must grow the shim (and its tests) first.
"""
from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Iterator
from typing import Any

from qail_ros.errors import LaunchError

__all__ = ['LaunchDescription', 'DeclareLaunchArgument', 'LaunchConfiguration', 'Node', 'Shutdown',
           'PackageNotFoundError', 'get_package_share_directory', 'shim_modules', 'installed',
           'SHIMMED_MODULES']

#: The module names the shim provides (and hides the real ones of while a file is evaluated).
SHIMMED_MODULES = ('launch', 'launch.actions', 'launch.substitutions', 'launch_ros',
                   'launch_ros.actions', 'ament_index_python', 'ament_index_python.packages')


class LaunchConfiguration:
    """`launch.substitutions.LaunchConfiguration`: the value of a launch argument."""

    def __init__(self, variable_name: str, *, default: Any = None):
        if not isinstance(variable_name, str) or not variable_name:
            raise LaunchError(f'LaunchConfiguration needs a non-empty name, got {variable_name!r}')
        self.variable_name = variable_name
        self.default = default
        _referenced.add(variable_name)

    def __repr__(self) -> str:
        return f'LaunchConfiguration({self.variable_name!r})'


class DeclareLaunchArgument:
    """`launch.actions.DeclareLaunchArgument`: a `name:=value` argument of the launch file."""

    def __init__(self, name: str, *, default_value: Any = None, description: str | None = None,
                 choices: list[str] | None = None, **kwargs: Any):
        _no_extra('DeclareLaunchArgument', kwargs)
        if not isinstance(name, str) or not name:
            raise LaunchError(f'DeclareLaunchArgument needs a non-empty name, got {name!r}')
        self.name = name
        self.default_value = default_value
        self.description = description or ''
        self.choices = list(choices) if choices is not None else None

    def __repr__(self) -> str:
        return f'DeclareLaunchArgument({self.name!r}, default_value={self.default_value!r})'


class Shutdown:
    """`launch.actions.Shutdown`: as a Node's `on_exit`, end the launch when the node exits."""

    def __init__(self, *, reason: Any = 'reason not given', **kwargs: Any):
        _no_extra('Shutdown', kwargs)
        self.reason = reason

    def __repr__(self) -> str:
        return f'Shutdown(reason={self.reason!r})'


class Node:
    """`launch_ros.actions.Node`: one node executable to start."""

    #: keyword arguments of the real Node / ExecuteProcess that do not change what runs.
    _ACCEPTED = {'output', 'emulate_tty', 'sigterm_timeout', 'sigkill_timeout', 'respawn',
                 'respawn_delay', 'prefix', 'additional_env', 'cwd', 'log_cmd'}

    def __init__(self, *, executable: Any, package: Any = None, name: Any = None,
                 namespace: Any = None, exec_name: Any = None, parameters: Any = None,
                 remappings: Any = None, ros_arguments: Any = None, arguments: Any = None,
                 on_exit: Any = None, **kwargs: Any):
        unsupported = sorted(set(kwargs) - self._ACCEPTED)
        if unsupported:
            raise LaunchError(
                f"launch_ros Node argument(s) {unsupported} are not supported by the qail_ros "
                'embedded launcher; remove them or extend qail_ros/launching/shim.py')
        self.package = package
        self.executable = executable
        self.name = name
        self.namespace = namespace
        self.exec_name = exec_name
        self.parameters = list(parameters) if parameters is not None else []
        self.remappings = list(remappings) if remappings is not None else []
        self.ros_arguments = list(ros_arguments) if ros_arguments is not None else []
        self.arguments = list(arguments) if arguments is not None else []
        exits = on_exit if isinstance(on_exit, (list, tuple)) else (
            [] if on_exit is None else [on_exit])
        if any(not isinstance(a, Shutdown) for a in exits):
            raise LaunchError('on_exit of a launch_ros Node: only launch.actions.Shutdown() is '
                              'supported by the qail_ros embedded launcher')
        self.shutdown_on_exit = bool(exits)
        self.options = dict(kwargs)

    def __repr__(self) -> str:
        return (f'Node(package={self.package!r}, executable={self.executable!r}, '
                f'name={self.name!r})')


class LaunchDescription:
    """`launch.LaunchDescription`: the ordered list of actions a launch file returns."""

    def __init__(self, initial_entities: Any = None, *, deprecated_reason: str | None = None):
        self._entities: list[Any] = []
        for entity in initial_entities or []:
            self.add_action(entity)

    def add_action(self, action: Any) -> None:
        if not isinstance(action, (Node, DeclareLaunchArgument)):
            raise LaunchError(
                f'{type(action).__name__} is not supported by the qail_ros embedded launcher '
                '(it understands launch_ros.actions.Node and launch.actions.'
                'DeclareLaunchArgument); extend qail_ros/launching/shim.py to use it')
        self._entities.append(action)

    def add_entity(self, entity: Any) -> None:
        self.add_action(entity)

    @property
    def entities(self) -> list[Any]:
        return list(self._entities)

    def get_launch_arguments(self) -> list[DeclareLaunchArgument]:
        return [e for e in self._entities if isinstance(e, DeclareLaunchArgument)]


class PackageNotFoundError(KeyError):
    """`ament_index_python.packages.PackageNotFoundError`."""


def get_package_share_directory(package_name: str, print_warning: bool = True) -> str:
    """Only qail_ros's own share directory is known without ROS (qail_ros.share.share_dir)."""
    if package_name != 'qail_ros':
        raise PackageNotFoundError(
            f"package '{package_name}' has no share directory known to the qail_ros embedded "
            "launcher (only 'qail_ros' is); run this launch file with ros2 launch instead")
    from qail_ros.share import share_dir
    return str(share_dir())


def _no_extra(what: str, kwargs: dict[str, Any]) -> None:
    if kwargs:
        raise LaunchError(f'{what} argument(s) {sorted(kwargs)} are not supported by the '
                          'qail_ros embedded launcher; extend qail_ros/launching/shim.py')


#: LaunchConfiguration names constructed while the current file was evaluated (to tell a typo'd
#: `name:=value` from an argument the file reads without declaring it).
_referenced: set[str] = set()


def referenced_configurations() -> set[str]:
    return set(_referenced)


def shim_modules() -> dict[str, types.ModuleType]:
    """Fresh module objects for every name in SHIMMED_MODULES."""
    mods = {name: types.ModuleType(name, f'qail_ros shim of {name} (see {__name__})')
            for name in SHIMMED_MODULES}
    for name, mod in mods.items():
        mod.__qail_ros_shim__ = True
        if '.' not in name:
            mod.__path__ = []  # a package, so `import launch.actions` works
    mods['launch'].LaunchDescription = LaunchDescription
    mods['launch.actions'].DeclareLaunchArgument = DeclareLaunchArgument
    mods['launch.actions'].Shutdown = Shutdown
    mods['launch.substitutions'].LaunchConfiguration = LaunchConfiguration
    mods['launch_ros.actions'].Node = Node
    packages = mods['ament_index_python.packages']
    packages.get_package_share_directory = get_package_share_directory
    packages.PackageNotFoundError = PackageNotFoundError
    mods['ament_index_python'].get_package_share_directory = get_package_share_directory
    mods['ament_index_python'].PackageNotFoundError = PackageNotFoundError
    for name, mod in mods.items():
        if '.' in name:
            parent, child = name.rsplit('.', 1)
            setattr(mods[parent], child, mod)
    return mods


@contextlib.contextmanager
def installed() -> Iterator[dict[str, types.ModuleType]]:
    """Put the shim into sys.modules for the duration of the block, then restore it exactly.

    Submodules of the real packages that a previous import left in sys.modules (e.g.
    `launch.launch_context`) are hidden too, so nothing from the real packages mixes in.
    """
    roots = {name.split('.')[0] for name in SHIMMED_MODULES}
    saved = {name: mod for name, mod in sys.modules.items() if name.split('.')[0] in roots}
    for name in saved:
        del sys.modules[name]
    _referenced.clear()
    mods = shim_modules()
    sys.modules.update(mods)
    try:
        yield mods
    finally:
        for name in [n for n in sys.modules if n.split('.')[0] in roots]:
            del sys.modules[name]
        sys.modules.update(saved)
