"""`RclpyRuntime`: qail_ros nodes on real rclpy.

Messages stay `qail_ros.messages` (rosbags) classes, as in the embedded runtime: a publisher
serialises to CDR with `messages.serialize` and hands rclpy the bytes (`Publisher.publish(bytes)`
publishes them unchanged); a subscription is created with `raw=True` and its bytes are turned back
into a message with `messages.deserialize`. rclpy still needs the generated message class of each
topic for its type support, so it is imported from the installed interface package
(`sensor_msgs.msg.Image` for 'sensor_msgs/msg/Image'); a missing package is an error naming the
ROS package to install.

Parameters, remappings and `--params-file` are rcl's own: `init(argv)` hands argv to
`rclpy.init` (global arguments, as for any rclpy program started by `ros2 run` / `ros2 launch`),
and a node created with other `cli_args` gets their ROS part as node-level arguments.

This is the only qail_ros module that imports rclpy (on import, on purpose: importing it means
rclpy mode was chosen).
"""
from __future__ import annotations

import array
import importlib
import logging
import os
import sys
import time
import traceback
from typing import Any, Callable, cast

import rclpy
import rclpy.impl.rcutils_logger as _rcutils_logger
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node as _RclpyNode
from rclpy.parameter import Parameter as _RclpyParameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions

from qail_ros import messages
from qail_ros.errors import ParameterError, QailRosError, UnknownMessageTypeError
from qail_ros.runtime.api import (NodeHandle, PublisherHandle, QoS, Runtime, SubscriptionHandle,
                                  TimerHandle)

__all__ = ['RclpyRuntime', 'RclpyNodeHandle', 'RclpyLogger', 'to_qos_profile',
           'ros_message_class', 'rclpy_version']

#: How long one executor wait may block: bounds how late Ctrl-C and `duration_s` are noticed,
#: because rclpy's own signal handlers are not installed (see `RclpyRuntime.init`).
SPIN_SLICE_S = 0.1

_PY_TO_ROS_LEVEL = {logging.DEBUG: 10, logging.INFO: 20, logging.WARNING: 30, logging.ERROR: 40,
                    logging.CRITICAL: 50}
_RCLPY_LOG_KWARGS = ('throttle_duration_sec', 'throttle_time_source_type', 'skip_first', 'once')

# rclpy attributes a log call (for its once/throttle filters and the printed location) to the
# first frame outside the files in this list; adding the adapter below makes that the node's
# own call site, not the adapter.
_callers = getattr(_rcutils_logger, '_internal_callers', None)
if isinstance(_callers, list) and os.path.realpath(__file__) not in _callers:
    _callers.append(os.path.realpath(__file__))


def rclpy_version() -> str:
    """Version of the installed rclpy distribution ('ros-rclpy' wheel or a ROS install)."""
    from importlib import metadata
    for dist in ('ros-rclpy', 'rclpy'):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return 'unknown'


# -- messages and QoS ---------------------------------------------------------------------------
_class_cache: dict[str, type] = {}


def ros_message_class(msgtype: str) -> type:
    """The rclpy (rosidl-generated) class of a ROS type name, for rclpy's type support."""
    norm = messages.normalize_type(msgtype)
    cached = _class_cache.get(norm)
    if cached is not None:
        return cached
    messages.get_class(norm)  # unknown to qail_ros itself: that error names the fix
    pkg, kind, name = norm.split('/')
    ros_pkg = pkg.replace('_', '-')
    try:
        module = importlib.import_module(f'{pkg}.{kind}')
    except ModuleNotFoundError:
        raise UnknownMessageTypeError(
            f"rclpy mode needs the ROS interface package '{pkg}' for topic type '{norm}', "
            f"but Python cannot import '{pkg}.{kind}'. Install it: 'apt install "
            f"ros-$ROS_DISTRO-{ros_pkg}' and source the ROS setup (a ROS install), or "
            f"'pip install ros-{ros_pkg}' (ros-python-wheels venv); or run with "
            'QAIL_ROS_RUNTIME=embedded') from None
    cls = getattr(module, name, None)
    if not isinstance(cls, type):
        raise UnknownMessageTypeError(
            f"the installed ROS package '{pkg}' ({os.path.dirname(module.__file__ or '')}) has no "
            f"{kind} '{name}': it may be from an older distribution than qail_ros's "
            f'{messages.DISTRO} definitions; update the package')
    _class_cache[norm] = cls
    return cls


def to_qos_profile(qos: QoS | int) -> QoSProfile:
    """rclpy QoSProfile of a qail_ros QoS (or a bare depth, as rclpy accepts)."""
    qos = QoS.coerce(qos)
    return QoSProfile(
        depth=qos.depth,
        history=(HistoryPolicy.KEEP_LAST if qos.history == 'keep_last'
                 else HistoryPolicy.KEEP_ALL),
        reliability=(ReliabilityPolicy.RELIABLE if qos.reliability == 'reliable'
                     else ReliabilityPolicy.BEST_EFFORT),
        durability=(DurabilityPolicy.VOLATILE if qos.durability == 'volatile'
                    else DurabilityPolicy.TRANSIENT_LOCAL),
    )


def _python_value(value: Any) -> Any:
    """rclpy parameter values as plain Python (array parameters can arrive as array.array)."""
    if isinstance(value, (array.array, tuple)):
        return list(value)
    return value


# -- logging ------------------------------------------------------------------------------------
class RclpyLogger:
    """rclpy's logger with the `logging.Logger` calls nodes make (%-style args, warning, ...).

    Messages go through rcutils, so they reach the console and /rosout like any rclpy log line;
    rclpy's keyword filters (`once=True`, `throttle_duration_sec=...`) are passed through.
    """

    def __init__(self, rcl_logger):
        self._logger = rcl_logger
        self.name = rcl_logger.name

    def _log(self, level: int, msg: Any, args: tuple, kwargs: dict) -> None:
        severity = _PY_TO_ROS_LEVEL.get(level, level)
        if not self._logger.is_enabled_for(severity):
            return
        text = str(msg) % args if args else str(msg)
        exc_info = kwargs.pop('exc_info', None)
        if exc_info:
            text += '\n' + (traceback.format_exc() if exc_info is True else ''.join(
                traceback.format_exception(*(exc_info if isinstance(exc_info, tuple) else (
                    type(exc_info), exc_info, exc_info.__traceback__))))).rstrip()
        filters = {k: kwargs[k] for k in _RCLPY_LOG_KWARGS if k in kwargs}
        self._logger.log(text, severity, **filters)

    def debug(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self._log(logging.DEBUG, msg, args, kwargs)

    def info(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self._log(logging.INFO, msg, args, kwargs)

    def warning(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self._log(logging.WARNING, msg, args, kwargs)

    warn = warning

    def error(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self._log(logging.ERROR, msg, args, kwargs)

    def exception(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault('exc_info', True)
        self._log(logging.ERROR, msg, args, kwargs)

    def critical(self, msg: Any, *args: Any, **kwargs: Any) -> None:
        self._log(logging.CRITICAL, msg, args, kwargs)

    fatal = critical

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        self._log(level, msg, args, kwargs)

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 - logging.Logger's name
        return self._logger.is_enabled_for(_PY_TO_ROS_LEVEL.get(level, level))

    def setLevel(self, level: int) -> None:  # noqa: N802 - logging.Logger's name
        self._logger.set_level(_PY_TO_ROS_LEVEL.get(level, level))

    def getChild(self, suffix: str) -> 'RclpyLogger':  # noqa: N802 - logging.Logger's name
        return RclpyLogger(self._logger.get_child(suffix))


# -- handles ------------------------------------------------------------------------------------
class RclpyPublisher(PublisherHandle):
    def __init__(self, publisher, msgtype: str):
        self._pub = publisher
        self.msgtype = msgtype
        self.topic = publisher.topic_name

    def publish(self, msg: Any) -> None:
        if isinstance(msg, (bytes, bytearray, memoryview)):
            self._pub.publish(bytes(msg))  # already CDR (e.g. forwarded from a bag)
            return
        got = getattr(msg, '__msgtype__', None)
        if got != self.msgtype:
            raise TypeError(f"publisher on '{self.topic}' sends {self.msgtype}, "
                            f'got {got or type(msg).__name__}')
        self._pub.publish(messages.serialize(msg))

    def get_subscription_count(self) -> int:
        return self._pub.get_subscription_count()


class RclpySubscription(SubscriptionHandle):
    def __init__(self, subscription, msgtype: str):
        self._sub = subscription
        self.msgtype = msgtype
        self.topic = subscription.topic_name


class RclpyTimer(TimerHandle):
    def __init__(self, timer):
        self._timer = timer

    def cancel(self) -> None:
        self._timer.cancel()


class RclpyNodeHandle(NodeHandle):
    """One rclpy Node behind the qail_ros NodeHandle interface."""

    def __init__(self, runtime: 'RclpyRuntime', node_name: str, namespace: str = '',
                 cli_args: list[str] | None = None):
        self._runtime = runtime
        node_args = runtime.node_cli_args(cli_args)
        try:
            self.rclpy_node = _RclpyNode(node_name, namespace=namespace or None,
                                         cli_args=node_args, context=runtime.context)
        except RuntimeError as exc:  # rcl's UnknownROSArgsError / RCLError on bad arguments
            raise ParameterError(f"cannot create node '{node_name}' with ROS arguments "
                                 f'{node_args}: {exc}') from None
        self.name = self.rclpy_node.get_name()
        ns = self.rclpy_node.get_namespace()
        self.namespace = '' if ns == '/' else ns
        # duck-typed: RclpyLogger has the logging.Logger calls nodes make
        self.logger = cast(logging.Logger, RclpyLogger(self.rclpy_node.get_logger()))
        #: Parameters rclpy declares on every node by itself (use_sim_time, ...): a params file
        #: may set them although the qail_ros node does not declare them.
        self.builtin_parameters = frozenset(self.rclpy_node.list_parameters([], 0).names)
        self.rclpy_node.add_on_set_parameters_callback(self._on_set_parameters)
        self._destroyed = False

    # communication
    def create_publisher(self, msgtype: str, topic: str, qos: QoS) -> PublisherHandle:
        pub = self.rclpy_node.create_publisher(ros_message_class(msgtype), topic,
                                               to_qos_profile(qos))
        self._check_type_hash(msgtype, pub.topic_name, publisher=True)
        return RclpyPublisher(pub, messages.normalize_type(msgtype))

    def create_subscription(self, msgtype: str, topic: str, callback: Callable[[Any], None],
                            qos: QoS) -> SubscriptionHandle:
        norm = messages.normalize_type(msgtype)

        def raw_callback(data: bytes) -> None:
            callback(messages.deserialize(data, norm))

        sub = self.rclpy_node.create_subscription(ros_message_class(norm), topic, raw_callback,
                                                  to_qos_profile(qos), raw=True)
        self._check_type_hash(norm, sub.topic_name, publisher=False)
        return RclpySubscription(sub, norm)

    def create_timer(self, period_s: float, callback: Callable[[], None]) -> TimerHandle:
        return RclpyTimer(self.rclpy_node.create_timer(period_s, callback))

    def _check_type_hash(self, msgtype: str, topic: str, publisher: bool) -> None:
        """Warn once per type when this ROS install's definition differs from qail_ros's."""
        norm = messages.normalize_type(msgtype)
        if norm in self._runtime.checked_types:
            return
        self._runtime.checked_types.add(norm)
        node = self.rclpy_node
        infos = (node.get_publishers_info_by_topic(topic) if publisher
                 else node.get_subscriptions_info_by_topic(topic))
        ours = messages.type_hash(norm)
        for info in infos:
            if info.node_name == node.get_name() and info.topic_type == norm:
                if not hasattr(info, 'topic_type_hash'):  # Humble: no type hashes yet
                    return
                theirs = str(info.topic_type_hash)
                if theirs != ours and not theirs.startswith('RIHS01_0000000'):
                    self.logger.warning(
                        "the definition of %s in this ROS install (%s) differs from qail_ros's "
                        '%s definition (%s): peers may not match and CDR may not decode; '
                        'use interface packages of the same definition', norm, theirs,
                        messages.DISTRO, ours)
                return

    # parameters
    def declare_parameter(self, name: str, default: Any, description: str = '',
                          spec: Any = None) -> Any:
        from rcl_interfaces.msg import ParameterDescriptor
        from rclpy.exceptions import ParameterException
        # Dynamic typing: the base Node checks types (an int for a float default is accepted,
        # as in the embedded runtime) and ranges, and gives qail_ros's error, not rclpy's. The
        # range / choices travel as text (`ros2 param describe` shows them), read_only as
        # rclpy's own flag.
        read_only = bool(getattr(spec, 'read_only', False))
        constraints = spec.constraints() if spec is not None else ''
        descriptor = ParameterDescriptor(description=description, dynamic_typing=True,
                                         read_only=read_only,
                                         additional_constraints=constraints)
        try:
            param = self.rclpy_node.declare_parameter(
                name, list(default) if isinstance(default, tuple) else default, descriptor)
        except ParameterException as exc:
            raise ParameterError(f"node '{self.name}': parameter '{name}': {exc}") from None
        value = _python_value(param.value)
        if (isinstance(default, float) and isinstance(value, int)
                and not isinstance(value, bool)):
            value = float(value)
            if not read_only:   # rclpy refuses any set of a read-only one
                self.set_parameter(name, value)
        return value

    def _on_set_parameters(self, parameters: list) -> Any:
        """rclpy's on-set-parameters callback: every set (ours, `ros2 param set`, a parameter
        service call) goes through the qail_ros node's check; a refusal carries its reason."""
        from rcl_interfaces.msg import SetParametersResult
        for param in parameters:
            reason = self.check_parameter(param.name, _python_value(param.value))
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def get_parameter(self, name: str) -> Any:
        return _python_value(self.rclpy_node.get_parameter(name).value)

    def set_parameter(self, name: str, value: Any) -> None:
        value = list(value) if isinstance(value, tuple) else value
        result = self.rclpy_node.set_parameters([_RclpyParameter(name, value=value)])[0]
        if not result.successful:
            raise ParameterError(f"node '{self.name}' rejected parameter '{name}' = {value!r}: "
                                 f'{result.reason}')

    # clock, names, teardown
    def now_ns(self) -> int:
        return self.rclpy_node.get_clock().now().nanoseconds

    def resolve_topic(self, topic: str) -> str:
        resolve = getattr(self.rclpy_node, 'resolve_topic_name', None)  # newer rclpy only
        return resolve(topic) if resolve is not None else super().resolve_topic(topic)

    def destroy(self) -> None:
        if self._destroyed:
            return
        self._destroyed = True
        self._runtime.forget(self)
        self.rclpy_node.destroy_node()


def _ros_part(argv: list[str] | None) -> list[str]:
    """Only the `--ros-args ... [--]` parts of argv, as one `--ros-args ...` list."""
    out: list[str] = []
    inside = False
    for arg in argv or []:
        if arg == '--ros-args':
            inside = True
        elif inside and arg == '--':
            inside = False
        elif inside:
            out.append(arg)
    return ['--ros-args', *out] if out else []


def _rclpy_node_of(node: Any):
    """The rclpy Node behind a qail_ros Node, a handle, or an rclpy Node itself."""
    handle = getattr(node, '_handle', node)
    if isinstance(handle, RclpyNodeHandle):
        return handle.rclpy_node
    if isinstance(handle, _RclpyNode):
        return handle
    raise TypeError(f'{type(node).__name__} is not a node of the rclpy runtime')


class RclpyRuntime(Runtime):
    """The ROS 2 client library itself: rcl, the RMW chosen by RMW_IMPLEMENTATION, DDS."""

    name = 'rclpy'

    def __init__(self):
        self.context = None
        self.checked_types: set[str] = set()
        self._global_ros_args: list[str] = []
        self._executor: SingleThreadedExecutor | None = None
        self._handles: list[RclpyNodeHandle] = []

    # -- lifecycle ----------------------------------------------------------------------------
    def init(self, args: list[str] | None = None) -> list[str]:
        """rclpy.init with argv (sys.argv when None, as rclpy does); idempotent.

        rclpy's SIGINT/SIGTERM handlers are not installed: Ctrl-C is Python's KeyboardInterrupt,
        so `nodes_main` runs every node's on_deactivate / on_cleanup while the context is still
        up (a node can publish a last message, a bag is closed), and the executor waits in
        slices of SPIN_SLICE_S so the interrupt is seen promptly.
        """
        from rclpy.utilities import remove_ros_args
        argv = list(sys.argv if args is None else args)
        if self.context is None or not self.context.ok():
            if not rclpy.ok():  # else: the program called rclpy.init itself; use its context
                try:
                    rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
                except RuntimeError as exc:  # UnknownROSArgsError, RCLError: bad --ros-args
                    raise ParameterError(f'rclpy rejected the ROS arguments '
                                         f'{_ros_part(argv)}: {exc}') from None
                self._global_ros_args = _ros_part(argv)
            self.context = rclpy.get_default_context()
            self._executor = SingleThreadedExecutor(context=self.context)
        return remove_ros_args(args=argv)

    def node_cli_args(self, cli_args: list[str] | None) -> list[str] | None:
        """Node-level ROS arguments: the ROS part of cli_args unless it is the global one.

        rcl applies global arguments (given to init) to every node of the context, and node
        arguments on top; passing the same `--params-file` twice would only repeat work.
        """
        ros = _ros_part(cli_args)
        return ros if ros and ros != self._global_ros_args else None

    def create_node_handle(self, node_name: str, namespace: str = '',
                           cli_args: list[str] | None = None) -> NodeHandle:
        if self.context is None or not self.context.ok():
            self.init()
        handle = RclpyNodeHandle(self, node_name, namespace=namespace, cli_args=cli_args)
        self._handles.append(handle)
        assert self._executor is not None
        self._executor.add_node(handle.rclpy_node)
        return handle

    def forget(self, handle: RclpyNodeHandle) -> None:
        if handle in self._handles:
            self._handles.remove(handle)
        if self._executor is not None:
            self._executor.remove_node(handle.rclpy_node)

    # -- executing ----------------------------------------------------------------------------
    def _executor_for(self, nodes: list) -> SingleThreadedExecutor:
        if self._executor is None:
            raise QailRosError('the rclpy runtime is not initialised: call init() first')
        present = set(self._executor.get_nodes())
        for node in nodes:
            rnode = _rclpy_node_of(node)
            if rnode not in present:
                self._executor.add_node(rnode)
        return self._executor

    def spin(self, nodes: list, duration_s: float | None = None) -> None:
        """Run callbacks until the context shuts down, `duration_s` passes or Ctrl-C.

        KeyboardInterrupt propagates (nodes_main turns it into a clean exit); a shutdown from
        elsewhere (rclpy.shutdown in another thread, ExternalShutdownException) just returns.
        """
        executor = self._executor_for(nodes)
        deadline = None if duration_s is None else time.monotonic() + duration_s
        try:
            while self.ok():
                timeout = SPIN_SLICE_S
                if deadline is not None:
                    timeout = min(timeout, deadline - time.monotonic())
                    if timeout <= 0:
                        return
                executor.spin_once(timeout_sec=timeout)
        except ExternalShutdownException:
            return

    def spin_once(self, nodes: list, timeout_s: float = 0.1) -> None:
        try:
            self._executor_for(nodes).spin_once(timeout_sec=timeout_s)
        except ExternalShutdownException:
            return

    def ok(self) -> bool:
        return self.context is not None and self.context.ok()

    def request_shutdown(self) -> None:
        if self.context is not None:
            rclpy.try_shutdown(context=self.context)

    def shutdown(self) -> None:
        """Destroy what is left and shut the context down (safe to call twice)."""
        for handle in list(self._handles):
            try:
                handle.destroy()
            except Exception:  # noqa: BLE001 - shutdown must continue
                pass
        if self._executor is not None:
            self._executor.shutdown(timeout_sec=1.0)
            self._executor = None
        if self.context is not None:
            rclpy.try_shutdown(context=self.context)
        self.context = None
        self.checked_types.clear()
