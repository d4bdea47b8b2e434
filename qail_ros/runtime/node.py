"""`Node`, the base class of every qail_ros node, and `run_node`, every node's `main()`.

A node is written once, rclpy-style:

    class Talker(Node):
        def __init__(self, **kwargs):
            super().__init__('talker', **kwargs)
            self.rate_hz = self.declare_parameter('rate_hz', 10.0).value
            self.pub = self.create_publisher('std_msgs/msg/String', 'chatter', 10)
            self.timer = self.create_timer(1.0 / self.rate_hz, self.timer_callback)

        def timer_callback(self):
            self.pub.publish(messages.new('std_msgs/msg/String', data='hi'))

    def main(args=None):
        return run_node(Talker, args)

Heavy nodes (policy engines) load in `on_configure` and start work in `on_activate`, like
ROS 2 lifecycle nodes; `run_node` drives configure -> activate at start-up and
deactivate -> cleanup at shutdown.
"""
from __future__ import annotations

import dataclasses
import difflib
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any, Callable

from qail_ros.errors import ParameterError, QailRosError
from qail_ros.messages import normalize_type, time_from_ns, type_name
import qail_ros.runtime.params as _params
from qail_ros.runtime.api import QoS

__all__ = ['Node', 'Parameter', 'run_node', 'nodes_main', 'prepare_fast_exit']


@dataclasses.dataclass
class Parameter:
    name: str
    value: Any


class Node:
    """Base class of qail_ros nodes; the same code runs on rclpy and on the embedded runtime."""

    def __init__(self, node_name: str, *, namespace: str = '', runtime=None,
                 cli_args: list[str] | None = None):
        from qail_ros.runtime.current import get_runtime
        self._runtime = runtime or get_runtime()
        self._runtime.init()
        self._handle = self._runtime.create_node_handle(node_name, namespace=namespace,
                                                        cli_args=cli_args)
        self._declared: set[str] = set()
        self._specs: dict[str, _params.ParameterSpec] = {}
        self._attribute_params: set[str] = set()   # declared by declare_parameters
        self._handle.set_parameters_callback(self._check_parameter_set)
        self._publishers: list = []
        self._subscriptions: list = []
        self._timers: list = []
        import qail_ros.runtime.clock as _clock
        self._sim_clock = _clock.attach(self)   # use_sim_time on the embedded runtime, else None

    # -- identity -------------------------------------------------------------------------
    def get_name(self) -> str:
        return self._handle.name

    def get_namespace(self) -> str:
        return self._handle.namespace or '/'

    def get_fully_qualified_name(self) -> str:
        return _params.fully_qualified_name(self._handle.name, self._handle.namespace)

    @property
    def runtime(self):
        return self._runtime

    def get_logger(self) -> logging.Logger:
        return self._handle.logger

    # -- communication --------------------------------------------------------------------
    def create_publisher(self, msg_type: str | type, topic: str, qos: QoS | int = 10):
        pub = self._handle.create_publisher(normalize_type(_tname(msg_type)), topic,
                                            QoS.coerce(qos))
        self._publishers.append(pub)
        return pub

    def create_subscription(self, msg_type: str | type, topic: str,
                            callback: Callable[[Any], None], qos: QoS | int = 10):
        sub = self._handle.create_subscription(normalize_type(_tname(msg_type)), topic, callback,
                                               QoS.coerce(qos))
        self._subscriptions.append(sub)
        return sub

    def create_timer(self, period_s: float, callback: Callable[[], None]):
        if period_s <= 0:
            raise ValueError(f'timer period must be > 0 s, not {period_s}')
        timer = (self._sim_clock or self._handle).create_timer(float(period_s), callback)
        self._timers.append(timer)
        return timer

    # -- parameters -----------------------------------------------------------------------
    def declare_parameter(self, name: str, default: Any, description: str = '', *,
                          spec: _params.ParameterSpec | None = None) -> Parameter:
        """Declare a parameter; its value is the override (params file, -p) or `default`.

        With a `spec` (range, choices, read-only; see `declare_parameters`), the value is
        checked now and on every later set, on both runtimes."""
        spec = spec or _params.ParameterSpec(name, default, description)
        value = self._handle.declare_parameter(name, default, description, spec)
        if default is not None and value is not None and not _compatible(default, value):
            raise ParameterError(
                f"parameter '{name}' of node '{self.get_name()}' must be "
                f'{type(default).__name__} (default {default!r}), got {value!r}')
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        problem = spec.problem(value)
        if problem:
            raise ParameterError(f"node '{self.get_name()}': {problem}")
        self._declared.add(name)
        self._specs[name] = spec
        return Parameter(name, value)

    def declare_parameters(self, specs: Sequence[_params.ParameterSpec]) -> dict[str, Any]:
        """Declare each spec and set the node attribute it names (`spec.attribute`); later
        sets (`set_parameter`, `ros2 param set`) are checked against the spec, refused with
        the reason when out of range or read-only, and update that attribute."""
        values = {}
        for spec in specs:
            value = self.declare_parameter(spec.name, spec.default, spec.description,
                                           spec=spec).value
            setattr(self, spec.attribute, value)
            self._attribute_params.add(spec.name)
            values[spec.name] = value
        return values

    def get_parameter(self, name: str) -> Parameter:
        if name not in self._declared:
            raise ParameterError(f"node '{self.get_name()}' has no parameter '{name}'")
        return Parameter(name, self._handle.get_parameter(name))

    def set_parameter(self, name: str, value: Any) -> None:
        """Set a declared parameter; ParameterError with the reason when it is refused."""
        if name not in self._declared:
            raise ParameterError(f"node '{self.get_name()}' has no parameter '{name}'")
        self._handle.set_parameter(name, value)

    @property
    def declared_parameters(self) -> set[str]:
        return set(self._declared)

    @property
    def parameter_specs(self) -> dict[str, _params.ParameterSpec]:
        return dict(self._specs)

    def _check_parameter_set(self, name: str, value: Any) -> str | None:
        """The runtime's on-set-parameters callback: None to accept (after applying the
        value), else the reason of the refusal. Parameters not declared through this class
        (rclpy's own, or one being declared right now) pass."""
        spec = self._specs.get(name)
        if spec is None:
            return None
        if spec.default is not None and not _compatible(spec.default, value):
            return (f'{name} must be {type(spec.default).__name__} (default '
                    f'{spec.default!r}), not {value!r}')
        if isinstance(spec.default, float) and isinstance(value, int):
            value = float(value)
        if spec.read_only:
            return (f"parameter '{name}' is read-only: a change needs a reload; restart the "
                    f'node with {name}:={value!r}')
        problem = spec.problem(value)
        if problem:
            return problem
        reason = self.on_parameter_change(name, value)
        if reason:
            return reason
        if name in self._attribute_params:
            setattr(self, spec.attribute, value)
        return None

    def on_parameter_change(self, name: str, value: Any) -> str | None:
        """Apply a checked change of a declared parameter (override in nodes whose helpers
        hold a copy: a worker's rate, a log period); return a reason to refuse it. The node
        attribute of a spec given to `declare_parameters` is updated after this returns None."""
        return None

    # -- clock ----------------------------------------------------------------------------
    def now_ns(self) -> int:
        return (self._sim_clock or self._handle).now_ns()

    def now(self):
        """builtin_interfaces/msg/Time of the node's clock (for headers)."""
        return time_from_ns(self.now_ns())

    # -- lifecycle ------------------------------------------------------------------------
    def on_configure(self) -> None:
        """Load what is heavy (engines, files). Called once before on_activate."""

    def on_activate(self) -> None:
        """Start work (timers, publishing)."""

    def on_deactivate(self) -> None:
        """Stop work; called at shutdown."""

    def on_cleanup(self) -> None:
        """Free what on_configure loaded and close files (bags!)."""

    def request_shutdown(self) -> None:
        """End the process's spin (like rclpy.shutdown() from a callback): for a node whose
        work is done, e.g. a simulator bridge after its last episode. Every node of the process
        then gets on_deactivate / on_cleanup as after Ctrl-C, so bags are closed."""
        self._runtime.request_shutdown()

    def destroy_node(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._handle.destroy()


def _tname(msg_type: str | type) -> str:
    return msg_type if isinstance(msg_type, str) else type_name(msg_type)


def _compatible(default: Any, value: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return True


#: Parameters rclpy declares on every node; the embedded runtime accepts them too
#: (use_sim_time: qail_ros.runtime.clock).
BUILTIN_PARAMETERS = frozenset({'use_sim_time', 'start_type_description_service'})


def check_node_parameters(node: Node, cli_args: list[str] | None) -> None:
    """Raise ParameterError if a params file / -p sets something the node does not declare."""
    ros, _rest = _params.split_ros_args(cli_args or [])
    fqn = node.get_fully_qualified_name()
    # Parameters every ROS 2 node has (rclpy declares them itself; launch files often set
    # use_sim_time) are accepted in both modes.
    declared = (node.declared_parameters | BUILTIN_PARAMETERS
                | set(getattr(node._handle, 'builtin_parameters', ())))
    for path in ros.params_files:
        sections = _params.load_params_file(path)
        # A shared file may hold sections for other nodes; only a section whose name is close
        # to ours while none matches us is taken for a typo (the launcher checks whole files).
        named = _params.node_sections(sections)
        if named and not any(_params.key_matches(k, fqn) for k in named):
            close = difflib.get_close_matches(node.get_name(),
                                              [k.rsplit('/', 1)[-1] for k in named], n=1)
            if close:
                _params.check_sections(path, sections, [fqn])
        given = _params.params_for_node(sections, fqn)
        _params.check_declared(f'parameter file {path}', given, declared, node.get_name())
    _params.check_declared('command line (-p)', ros.params, declared, node.get_name())


#: Anything that makes a node given `cli_args=`: a Node subclass or a function.
NodeFactory = Callable[..., Node]


def nodes_main(factories: Sequence[NodeFactory | tuple[NodeFactory, Sequence[str] | None]],
               args: list[str] | None = None, duration_s: float | None = None) -> int:
    """Create nodes, configure + activate them, spin until Ctrl-C / shutdown, clean up.

    Several nodes run in one process (composition: `qail-ros launch --composed`). `args` are
    the process's arguments (sys.argv when None); their ROS part applies to every node, as the
    global arguments of `rclpy.init(args=...)` do. An entry of `factories` is either a factory,
    called with `cli_args=args`, or a `(factory, node_args)` pair whose node gets `node_args`
    as its own arguments (`--ros-args -r __node:=... --params-file ... -r from:=to`) on top of
    the global ones, like the `arguments` of an rclpy Node; this is how one process runs
    several nodes each with its own name, parameters and remappings.

    Returns a process exit code: 0 after Ctrl-C / SIGTERM / `duration_s`, 2 after a qail_ros
    error (a bad parameter, say), printed on stderr. Every node created gets
    on_deactivate, on_cleanup and destroy_node at the end, whatever happened.
    """
    from qail_ros.runtime.current import get_runtime
    argv = list(sys.argv if args is None else args)
    entries = [(f[0], None if f[1] is None else list(f[1])) if isinstance(f, tuple) else (f, None)
               for f in factories]
    runtime = get_runtime()
    runtime.init(argv)
    nodes: list[Node] = []
    log = logging.getLogger('qail_ros')
    _install_sigterm_as_interrupt()
    code = 0
    try:
        for factory, node_args in entries:
            if node_args is None:
                node = factory(cli_args=argv)
                check_node_parameters(node, argv)
            else:
                node = factory(cli_args=node_args)
                check_node_parameters(node, argv + ['--'] + node_args)
            nodes.append(node)
        for node in nodes:
            node.on_configure()
        for node in nodes:
            node.on_activate()
        runtime.spin(nodes, duration_s=duration_s)
    except KeyboardInterrupt:
        pass
    except QailRosError as exc:
        log.error('%s', exc)
        print(f'error: {exc}', file=sys.stderr)
        code = 2
    finally:
        # A second Ctrl-C / SIGTERM must not cut the clean-up (bags, fail-safe) short.
        previous = _ignore_stop_signals()
        for node in reversed(nodes):
            for hook in (node.on_deactivate, node.on_cleanup, node.destroy_node):
                try:
                    hook()
                except Exception as exc:  # noqa: BLE001 - shutdown must reach every node
                    log.error('%s.%s failed during shutdown: %s', node.get_name(),
                              hook.__name__, exc)
        runtime.shutdown()
        _restore_signals(previous)
        if args is None:  # this is the program's main(): it ends right after
            prepare_fast_exit()
    return code


def prepare_fast_exit() -> None:
    """Make the interpreter's own exit fast once every node is cleaned up.

    With torch loaded, the garbage collection Python runs while finalising takes ~1 s here,
    which alone would break the launcher's "everything stopped within 2 s" (measured: 0.9-1.5 s
    from atexit to process end; 0.27 s with this). Freezing the heap skips that collection;
    objects are still released by reference counting as modules are torn down, and nodes have
    already closed their files in on_cleanup. Call it only when the process is about to exit.
    """
    import gc
    gc.freeze()


def run_node(node_cls: NodeFactory, args: list[str] | None = None,
             duration_s: float | None = None) -> int:
    """The body of a node's `main()`: one node in this process (see nodes_main)."""
    return nodes_main([node_cls], args, duration_s=duration_s)


def _ignore_stop_signals() -> dict:
    """Ignore SIGINT / SIGTERM while nodes clean up (closing bags, the fail-safe command), so
    a launcher's next signal cannot cut that short (it still has SIGKILL). Returns the handlers
    to restore."""
    previous: dict = {}
    if threading.current_thread() is not threading.main_thread():
        return previous
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, signal.SIG_IGN)
        except (ValueError, OSError):
            pass
    return previous


def _restore_signals(previous: dict) -> None:
    for sig, handler in previous.items():
        try:
            signal.signal(sig, handler)
        except (ValueError, OSError, TypeError):
            pass


def _install_sigterm_as_interrupt() -> None:
    """SIGTERM (what launchers send after SIGINT) unwinds like Ctrl-C, so bags get closed."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(_signum, _frame):
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):
        pass
