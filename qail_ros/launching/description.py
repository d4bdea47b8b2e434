"""Evaluate a ROS 2 launch file into plain node specs: what `ros2 launch` would start.

    spec = load_launch_file(find_launch_file('orin_vla'), {'instruction': 'open the drawer'})
    for node in spec.nodes:
        print(node.executable, node.name, node.parameters, node.remappings)

The launch file is a genuine one (`generate_launch_description()` returning a
`launch.LaunchDescription` of `DeclareLaunchArgument`s and `launch_ros.actions.Node`s). It is
always evaluated against the shim in `qail_ros.launching.shim` (also on a machine with ROS 2,
where the real `launch` would need private API to be read back); the shim has the real
signatures, so the same file runs unchanged under `ros2 launch`. Substitutions are resolved the
way `launch` resolves them: launch arguments in file order (command line `name:=value` first,
then `default_value`), a list of text pieces is their concatenation, and a substituted value in a
parameter dict is read as YAML (`'1.0'` -> 1.0) as launch_ros does.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import runpy
import threading
from pathlib import Path
from typing import Any

from qail_ros.errors import LaunchError
from qail_ros.launching import shim
from qail_ros.runtime.params import fully_qualified_name, parse_param_value

__all__ = ['NodeSpec', 'LaunchArgument', 'LaunchSpec', 'load_launch_file', 'find_launch_file',
           'available_launch_files', 'parse_launch_arguments', 'LAUNCH_SUFFIX',
           'REQUIRED_NODES_ARGUMENT']

LAUNCH_SUFFIX = '.launch.py'
#: A launch argument naming the nodes the launch cannot go on without ('a,b' or 'a b'): when
#: one of them exits or dies the launcher stops everything with a non-zero exit code (ROS 1's
#: `required="true"`). A plain launch argument, so `ros2 launch` accepts the same file.
REQUIRED_NODES_ARGUMENT = 'required_nodes'

_eval_lock = threading.Lock()


@dataclasses.dataclass
class NodeSpec:
    """One node of a launch description, every substitution resolved.

    `parameters` keeps the launch file's order: a `str` is a parameter file path, a `dict` maps
    parameter names to values (later entries win, as in launch_ros).
    """

    package: str | None
    executable: str
    name: str | None = None
    namespace: str | None = None
    parameters: list[str | dict[str, Any]] = dataclasses.field(default_factory=list)
    remappings: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    arguments: list[str] = dataclasses.field(default_factory=list)
    ros_arguments: list[str] = dataclasses.field(default_factory=list)
    shutdown_on_exit: bool = False       # on_exit=Shutdown(): the launch ends with this node
    required: bool = False               # named by the launch argument `required_nodes`

    @property
    def label(self) -> str:
        """What the launcher prefixes this node's output with."""
        return self.name or self.executable

    @property
    def fully_qualified_name(self) -> str | None:
        return fully_qualified_name(self.name, self.namespace or '') if self.name else None

    @property
    def parameter_files(self) -> list[str]:
        return [p for p in self.parameters if isinstance(p, str)]


@dataclasses.dataclass
class LaunchArgument:
    name: str
    default: str | None
    description: str = ''
    choices: list[str] | None = None


@dataclasses.dataclass
class LaunchSpec:
    """A launch file evaluated: its arguments, their values and its nodes in order."""

    path: Path
    arguments: list[LaunchArgument]
    values: dict[str, str]
    nodes: list[NodeSpec]

    def node(self, name: str) -> NodeSpec:
        for node in self.nodes:
            if node.label == name:
                return node
        raise KeyError(f"launch file {self.path.name} has no node '{name}'; nodes: "
                       f"{[n.label for n in self.nodes]}")


# ------------------------------------------------------------------------------------------
# finding launch files and parsing name:=value
# ------------------------------------------------------------------------------------------
def _launch_dir() -> Path:
    from qail_ros.share import share_dir
    return share_dir() / 'launch'


def available_launch_files(folder: Path | None = None) -> list[str]:
    """Launch names (without `.launch.py`) in the package's launch/ folder."""
    folder = folder or _launch_dir()
    if not folder.is_dir():
        return []
    return sorted(p.name[:-len(LAUNCH_SUFFIX)] for p in folder.glob('*' + LAUNCH_SUFFIX))


def find_launch_file(name: str, folder: Path | None = None) -> Path:
    """`orin_vla`, `orin_vla.launch.py` (looked up in the share dir's launch/) or a file path."""
    folder = folder or _launch_dir()
    if os.sep in name or name.startswith('.'):
        path = Path(name)
        if path.is_file():
            return path
        raise LaunchError(f'launch file not found: {name}')
    base = name[:-len(LAUNCH_SUFFIX)] if name.endswith(LAUNCH_SUFFIX) else name
    path = folder / (base + LAUNCH_SUFFIX)
    if path.is_file():
        return path
    names = available_launch_files(folder)
    guess = difflib.get_close_matches(base, names, n=1)
    hint = f"did you mean '{guess[0]}'? " if guess else ''
    raise LaunchError(f"no launch file '{name}' in {folder}; {hint}available launch files: "
                      f"{', '.join(names) or '(none)'}")


def parse_launch_arguments(tokens: list[str]) -> dict[str, str]:
    """`['instruction:=open it', 'rate:=5']` -> {'instruction': 'open it', 'rate': '5'}."""
    values: dict[str, str] = {}
    for token in tokens:
        name, sep, value = token.partition(':=')
        if not sep or not name:
            raise LaunchError(f"launch argument '{token}' is not of the form name:=value")
        values[name] = value
    return values


# ------------------------------------------------------------------------------------------
# evaluation
# ------------------------------------------------------------------------------------------
class _Resolver:
    """Performs substitutions against the launch configurations set so far."""

    def __init__(self, path: Path, values: dict[str, str]):
        self.path = path
        self.values = values

    def text(self, value: Any, what: str) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, shim.LaunchConfiguration):
            if value.variable_name in self.values:
                return self.values[value.variable_name]
            if value.default is not None:
                return self.text(value.default, what)
            raise LaunchError(
                f"{self.path.name}: {what} uses launch argument '{value.variable_name}', which "
                f'has no value: declare it with a default_value or pass '
                f'{value.variable_name}:=VALUE')
        if isinstance(value, (list, tuple)):
            return ''.join(self.text(v, what) for v in value)
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        raise LaunchError(f'{self.path.name}: {what} must be text or a substitution, got '
                          f'{type(value).__name__} ({value!r})')

    def optional_text(self, value: Any, what: str) -> str | None:
        return None if value is None else self.text(value, what)

    def param_value(self, value: Any, what: str) -> Any:
        if isinstance(value, shim.LaunchConfiguration) or (
                isinstance(value, (list, tuple)) and value
                and any(isinstance(v, shim.LaunchConfiguration) for v in value)
                and all(isinstance(v, (str, shim.LaunchConfiguration)) for v in value)):
            return parse_param_value(self.text(value, what))
        if isinstance(value, dict):
            return {str(k): self.param_value(v, f'{what}.{k}') for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.param_value(v, what) for v in value]
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise LaunchError(f'{self.path.name}: parameter {what} has a value of unsupported type '
                          f'{type(value).__name__} ({value!r})')


def _flatten(prefix: str, tree: dict[str, Any], out: dict[str, Any]) -> None:
    """launch_ros flattens nested parameter dicts into dotted names."""
    for key, value in tree.items():
        name = f'{prefix}.{key}' if prefix else key
        if isinstance(value, dict):
            _flatten(name, value, out)
        else:
            out[name] = value


def _node_spec(node: shim.Node, r: _Resolver) -> NodeSpec:
    executable = r.text(node.executable, 'Node executable')
    label = f"Node '{executable}'"
    parameters: list[str | dict[str, Any]] = []
    for i, entry in enumerate(node.parameters):
        if isinstance(entry, dict):
            flat: dict[str, Any] = {}
            _flatten('', {str(k): r.param_value(v, f"'{k}' of {label}")
                          for k, v in entry.items()}, flat)
            parameters.append(flat)
        else:
            path = r.text(entry, f'parameter file #{i} of {label}')
            if not os.path.isfile(path):
                raise LaunchError(f'{r.path.name}: parameter file of {label} not found: {path}')
            parameters.append(path)
    remappings: list[tuple[str, str]] = []
    for entry in node.remappings:
        if not isinstance(entry, (list, tuple)) or len(entry) != 2:
            raise LaunchError(f'{r.path.name}: remappings of {label} must be (from, to) pairs, '
                              f'got {entry!r}')
        remappings.append((r.text(entry[0], f'remapping of {label}'),
                           r.text(entry[1], f'remapping of {label}')))
    namespace = r.optional_text(node.namespace, f'namespace of {label}')
    if namespace is not None and not namespace.startswith('/'):
        namespace = '/' + namespace  # launch_ros makes a node's namespace absolute
    return NodeSpec(
        package=r.optional_text(node.package, f'package of {label}'),
        executable=executable,
        name=r.optional_text(node.name, f'name of {label}'),
        namespace=namespace,
        parameters=parameters,
        remappings=remappings,
        arguments=[r.text(a, f'arguments of {label}') for a in node.arguments],
        ros_arguments=[r.text(a, f'ros_arguments of {label}') for a in node.ros_arguments],
        shutdown_on_exit=bool(getattr(node, 'shutdown_on_exit', False)))


def load_launch_file(path: str | os.PathLike, arguments: dict[str, str] | list[str] | None = None
                     ) -> LaunchSpec:
    """Evaluate `generate_launch_description()` of a launch file with `name:=value` arguments.

    Raises LaunchError for a missing file, a file without `generate_launch_description`, an
    action or argument outside the supported subset, a required argument not given, a value not
    among an argument's `choices`, and a given argument that the file neither declares nor reads
    (with the closest declared name).
    """
    path = Path(path)
    if not path.is_file():
        raise LaunchError(f'launch file not found: {path}')
    given = (parse_launch_arguments(arguments) if isinstance(arguments, list)
             else dict(arguments or {}))
    with _eval_lock, shim.installed():
        try:
            namespace = runpy.run_path(str(path), run_name=f'qail_ros_launch_{path.stem}')
        except LaunchError:
            raise
        except ImportError as exc:
            raise LaunchError(
                f'{path.name} imports something outside the launch subset the qail_ros '
                f'embedded launcher provides ({exc}); use only LaunchDescription, '
                'DeclareLaunchArgument, LaunchConfiguration, launch_ros Node and '
                'get_package_share_directory, or run it with ros2 launch') from None
        generate = namespace.get('generate_launch_description')
        if not callable(generate):
            raise LaunchError(f'{path} defines no generate_launch_description() function')
        description = generate()
        referenced = shim.referenced_configurations()
    if not isinstance(description, shim.LaunchDescription):
        raise LaunchError(f'generate_launch_description() in {path.name} returned '
                          f'{type(description).__name__}, not a launch.LaunchDescription')

    values = dict(given)
    resolver = _Resolver(path, values)
    declared: list[LaunchArgument] = []
    nodes: list[NodeSpec] = []
    for entity in description.entities:
        if isinstance(entity, shim.DeclareLaunchArgument):
            default = resolver.optional_text(entity.default_value,
                                             f"default of argument '{entity.name}'")
            arg = LaunchArgument(entity.name, default, entity.description, entity.choices)
            declared.append(arg)
            if entity.name not in values:
                if default is None:
                    raise LaunchError(f"{path.name}: launch argument '{entity.name}' is required"
                                      f' ({entity.description or "no description"}); pass '
                                      f'{entity.name}:=VALUE')
                values[entity.name] = default
            if arg.choices is not None and values[entity.name] not in arg.choices:
                raise LaunchError(f"{path.name}: launch argument '{entity.name}' is "
                                  f"'{values[entity.name]}'; it must be one of {arg.choices}")
        else:
            nodes.append(_node_spec(entity, resolver))

    required = values.get(REQUIRED_NODES_ARGUMENT, '')
    names = [n for n in required.replace(',', ' ').split() if n]
    labels = [n.label for n in nodes]
    for name in names:
        if name not in labels:
            raise LaunchError(f"{path.name}: {REQUIRED_NODES_ARGUMENT} names '{name}', which "
                              f'this launch does not start; its nodes: {labels}')
    for node in nodes:
        node.required = node.label in names

    known = {a.name for a in declared} | referenced
    for name in given:
        if name not in known:
            guess = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f" (did you mean '{guess[0]}'?)" if guess else ''
            raise LaunchError(
                f"{path.name} has no launch argument '{name}'{hint}; its arguments are: "
                f"{', '.join(sorted(a.name for a in declared)) or '(none)'}")
    return LaunchSpec(path=path, arguments=declared, values=values, nodes=nodes)
