"""ROS 2 command-line arguments and YAML parameter files, without ROS.

Parses what `ros2 run` / `ros2 launch` pass a node (`--ros-args -r __node:=x -p a:=1
--params-file f.yaml ...`) and files in the ROS 2 format:

    camera_source:
      ros__parameters:
        rate_hz: 30.0

Node keys may be `name`, `/ns/name` or use the `*` / `**` wildcards, as in rcl. The same code
checks, in both runtime modes, that a parameter file has no section for a node that does not
exist and no parameter that the node does not declare: a typo is an error, not a silent default.
"""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import os
import re
from typing import Any

import yaml

from qail_ros.errors import ParameterError

__all__ = ['RosArgs', 'ParameterSpec', 'split_ros_args', 'load_params_file', 'params_for_node',
           'node_sections', 'key_matches', 'check_declared', 'check_sections',
           'parse_param_value', 'fully_qualified_name']


@dataclasses.dataclass(frozen=True)
class ParameterSpec:
    """A parameter declared once: name, default (its type), description, range / choices and
    whether a change at run time needs a reload (`read_only`: set at start only).

        ParameterSpec('max_rate_hz', 0.0, 'most inferences per second; 0 = one per frame',
                      min=0.0)
        ParameterSpec('precision', 'fp32', 'fp32 | bf16 | int4 | int4_ort', read_only=True)

    `Node.declare_parameters` declares each one (rclpy gets a ParameterDescriptor with the
    description, read_only and the constraints as text) and checks every value, at start and
    on every later set, on both runtimes. `attr` is the node attribute that holds the value
    (default: the name); a successful set updates it.
    """

    name: str
    default: Any
    description: str = ''
    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False
    choices: tuple | None = None
    read_only: bool = False
    attr: str | None = None
    #: the allowed values in words, for the error ('0 (per channel) or a positive size')
    allowed: str | None = None

    @property
    def attribute(self) -> str:
        return self.attr or self.name

    def constraints(self) -> str:
        """The range / choices / read-only note as one line ('' when unconstrained)."""
        parts = []
        if self.min is not None:
            parts.append(f"{'>' if self.min_exclusive else '>='} {self.min}")
        if self.max is not None:
            parts.append(f'<= {self.max}')
        if self.choices is not None:
            parts.append('one of ' + ', '.join(map(str, self.choices)))
        if self.read_only:
            parts.append('read-only (set at start; a change needs a reload)')
        return ', '.join(parts)

    def problem(self, value: Any) -> str | None:
        """Why `value` is out of range ('NAME must be >= 0, not -1.0'), or None."""
        problem = self._problem(value)
        if problem and self.allowed:
            return f'{self.name} must be {self.allowed}, not {value!r}'
        return problem

    def _problem(self, value: Any) -> str | None:
        if self.choices is not None and value not in self.choices:
            return (f'{self.name} must be one of {list(self.choices)}, not {value!r}')
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        if self.min is not None and (value <= self.min if self.min_exclusive
                                     else value < self.min):
            return f"{self.name} must be {'>' if self.min_exclusive else '>='} {self.min}, " \
                   f'not {value}'
        if self.max is not None and value > self.max:
            return f'{self.name} must be <= {self.max}, not {value}'
        return None


@dataclasses.dataclass
class RosArgs:
    remaps: dict[str, str] = dataclasses.field(default_factory=dict)
    node_name: str | None = None
    namespace: str | None = None
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    params_files: list[str] = dataclasses.field(default_factory=list)
    log_level: str | None = None

    def to_argv(self) -> list[str]:
        """Back to `--ros-args ...` form (what a launcher passes a child process)."""
        out = ['--ros-args']
        if self.node_name:
            out += ['-r', f'__node:={self.node_name}']
        if self.namespace:
            out += ['-r', f'__ns:={self.namespace}']
        for src, dst in self.remaps.items():
            out += ['-r', f'{src}:={dst}']
        for path in self.params_files:
            out += ['--params-file', path]
        for name, value in self.params.items():
            out += ['-p', f'{name}:={yaml.safe_dump(value, default_flow_style=True).strip()}'
                    .replace('\n...', '')]
        if self.log_level:
            out += ['--log-level', self.log_level]
        return out


def parse_param_value(text: str) -> Any:
    """`-p name:=VALUE` values are YAML, as in rcl (`1` int, `1.0` float, `[1, 2]` list)."""
    try:
        return yaml.safe_load(text) if text != '' else ''
    except yaml.YAMLError:
        return text


def split_ros_args(argv: list[str] | None) -> tuple[RosArgs, list[str]]:
    """Split argv into ROS arguments and the rest (argv[0] is kept in the rest if present)."""
    ros = RosArgs()
    rest: list[str] = []
    args = list(argv or [])
    i = 0
    in_ros = False
    while i < len(args):
        arg = args[i]
        if arg == '--ros-args':
            in_ros = True
        elif in_ros and arg == '--':
            in_ros = False
        elif in_ros:
            if arg in ('-r', '--remap', '-p', '--param', '--params-file', '--log-level', '-e',
                       '--enclave'):
                if i + 1 >= len(args):
                    raise ParameterError(f'ROS argument {arg} needs a value')
                value = args[i + 1]
                i += 1
                if arg in ('-r', '--remap'):
                    if ':=' not in value:
                        raise ParameterError(f"remap '{value}' is not of the form from:=to")
                    src, dst = value.split(':=', 1)
                    if src == '__node' or src == '__name':
                        ros.node_name = dst
                    elif src == '__ns':
                        ros.namespace = dst
                    else:
                        ros.remaps[src] = dst
                elif arg in ('-p', '--param'):
                    if ':=' not in value:
                        raise ParameterError(f"parameter '{value}' is not of the form name:=value")
                    name, text = value.split(':=', 1)
                    ros.params[name] = parse_param_value(text)
                elif arg == '--params-file':
                    ros.params_files.append(value)
                elif arg == '--log-level':
                    ros.log_level = value
            elif arg in ('--disable-rosout-logs', '--enable-rosout-logs',
                         '--disable-stdout-logs', '--enable-stdout-logs',
                         '--disable-external-lib-logs'):
                pass
            else:
                raise ParameterError(f"unknown ROS argument '{arg}' (after --ros-args)")
        else:
            rest.append(arg)
        i += 1
    return ros, rest


def _flatten(prefix: str, tree: dict, out: dict) -> None:
    for key, value in tree.items():
        name = f'{prefix}.{key}' if prefix else str(key)
        if isinstance(value, dict):
            _flatten(name, value, out)
        else:
            out[name] = value


def load_params_file(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """{node_key: {param: value}} from a ROS 2 parameter file, with format errors explained."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ParameterError(f'parameter file not found: {path}')
    try:
        with open(path, encoding='utf-8') as f:
            doc = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        raise ParameterError(f'parameter file {path} is not valid YAML: {exc}') from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ParameterError(f'parameter file {path}: top level must map node names to '
                             "'ros__parameters:' sections")
    sections: dict[str, dict[str, Any]] = {}

    def walk(prefix: str, tree: dict):
        for key, value in tree.items():
            if key == 'ros__parameters':
                if not isinstance(value, dict):
                    raise ParameterError(f"parameter file {path}: 'ros__parameters' of "
                                         f"'{prefix}' must be a mapping")
                flat: dict[str, Any] = {}
                _flatten('', value, flat)
                sections[prefix or '/**'] = flat
            elif isinstance(value, dict):
                walk(f'{prefix}/{key}'.replace('//', '/') if prefix else str(key), value)
            else:
                raise ParameterError(
                    f"parameter file {path}: '{key}' under '{prefix or '<top>'}' is not a node "
                    "section; parameters go under '<node_name>: ros__parameters:'")

    walk('', doc)
    return sections


def fully_qualified_name(node_name: str, namespace: str = '') -> str:
    ns = '/' + namespace.strip('/') if namespace.strip('/') else ''
    return f'{ns}/{node_name}'


def key_matches(key: str, fqn: str) -> bool:
    key = key if key.startswith('/') else '/' + key
    if key == '/**':
        return True
    # rcl: '*' matches one name token, '**' any number of them.
    pattern = re.escape(key).replace(r'\*\*', '\0').replace(r'\*', '[^/]*').replace('\0', '.*')
    return re.fullmatch(pattern, fqn) is not None or fnmatch.fnmatchcase(fqn, key)


def params_for_node(sections: dict[str, dict[str, Any]], fqn: str) -> dict[str, Any]:
    """Merge the sections that apply to node `fqn` in file order, later sections winning.

    This is rcl's rule (checked on rclpy): a `/**` section after `/ns/node` overrides it.
    """
    out: dict[str, Any] = {}
    for key, values in sections.items():
        if key_matches(key, fqn):
            out.update(values)
    return out


def node_sections(sections: dict[str, dict[str, Any]]) -> list[str]:
    """Section keys that name a specific node (no wildcard)."""
    return [k for k in sections if '*' not in k]


def check_sections(path: str, sections: dict[str, dict[str, Any]], fqns: list[str]) -> None:
    """Every non-wildcard section must name one of the nodes `fqns`."""
    names = {f.rsplit('/', 1)[-1] for f in fqns}
    for key in node_sections(sections):
        if not any(key_matches(key, fqn) for fqn in fqns):
            guess = difflib.get_close_matches(key.rsplit('/', 1)[-1], sorted(names), n=1)
            hint = f"; did you mean '{guess[0]}'?" if guess else ''
            raise ParameterError(
                f"parameter file {path} has a section for node '{key}', but the node(s) started "
                f"are {sorted(fqns)}{hint}")


def check_declared(source: str, given: dict[str, Any], declared: set[str], node: str) -> None:
    """Every parameter given to a node must be one it declares."""
    unknown = sorted(set(given) - declared)
    if unknown:
        parts = []
        for name in unknown:
            guess = difflib.get_close_matches(name, sorted(declared), n=1)
            parts.append(f"'{name}'" + (f" (did you mean '{guess[0]}'?)" if guess else ''))
        raise ParameterError(
            f"{source} sets parameter(s) {', '.join(parts)} that node '{node}' does not declare;"
            f" its parameters are: {', '.join(sorted(declared)) or '(none)'}")
