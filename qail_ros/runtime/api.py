"""The one seam between qail_ros nodes and ROS 2.

Nodes subclass `Node` and use an rclpy-shaped API (publishers, subscriptions, timers,
parameters, logger, clock). Message classes are the `qail_ros.messages` (rosbags) classes in
both modes. A `Runtime` implementation does the rest:

  * `RclpyRuntime`  (qail_ros.runtime.rclpy_runtime): real rclpy; publishes CDR bytes.
  * `EmbeddedRuntime` (qail_ros.runtime.embedded): no ROS install; Zenoh between processes
    (rmw_zenoh key layout), plain object passing inside one process.

Node code never asks which one is active.
"""
from __future__ import annotations

import abc
import dataclasses
import logging
from typing import Any, Callable

__all__ = ['QoS', 'SENSOR_DATA', 'DEFAULT_QOS', 'Runtime', 'NodeHandle', 'PublisherHandle',
           'SubscriptionHandle', 'TimerHandle']


@dataclasses.dataclass(frozen=True)
class QoS:
    """A QoS profile with the fields ROS 2 users set on topics."""

    depth: int = 10
    reliability: str = 'reliable'        # 'reliable' | 'best_effort'
    durability: str = 'volatile'         # 'volatile' | 'transient_local'
    history: str = 'keep_last'           # 'keep_last' | 'keep_all'

    def __post_init__(self):
        if self.reliability not in ('reliable', 'best_effort'):
            raise ValueError(f"reliability must be 'reliable' or 'best_effort', "
                             f'not {self.reliability!r}')
        if self.durability not in ('volatile', 'transient_local'):
            raise ValueError(f"durability must be 'volatile' or 'transient_local', "
                             f'not {self.durability!r}')
        if self.history not in ('keep_last', 'keep_all'):
            raise ValueError(f"history must be 'keep_last' or 'keep_all', not {self.history!r}")
        if self.depth < 0:
            raise ValueError(f'depth must be >= 0, not {self.depth}')

    @classmethod
    def coerce(cls, qos: 'QoS | int') -> 'QoS':
        """rclpy accepts a bare depth; so do we."""
        if isinstance(qos, QoS):
            return qos
        if isinstance(qos, int):
            return cls(depth=qos)
        raise TypeError(f'qos must be a QoS or an int depth, not {type(qos).__name__}')


#: Camera-style topics: newest data matters, losing one is fine (rclpy's qos_profile_sensor_data).
SENSOR_DATA = QoS(depth=5, reliability='best_effort')
DEFAULT_QOS = QoS()


class PublisherHandle(abc.ABC):
    topic: str
    msgtype: str

    @abc.abstractmethod
    def publish(self, msg: Any) -> None:
        """Send a message (a `qail_ros.messages` instance)."""

    def get_subscription_count(self) -> int:
        return 0


class SubscriptionHandle(abc.ABC):
    topic: str
    msgtype: str


class TimerHandle(abc.ABC):
    @abc.abstractmethod
    def cancel(self) -> None:
        ...


class PeriodicTimer(TimerHandle):
    """What every timer of the embedded runtime keeps: its period, callback and counts."""

    def __init__(self, period_s: float, callback: Callable[[], None]):
        self.period_ns = max(1, int(round(period_s * 1e9)))
        self.callback = callback
        self._canceled = False
        self.fired = 0
        self.skipped = 0

    @property
    def timer_period_ns(self) -> int:
        return self.period_ns

    def is_canceled(self) -> bool:
        return self._canceled


class NodeHandle(abc.ABC):
    """What a runtime gives one node. `Node` wraps it; nodes never touch it directly."""

    name: str
    namespace: str
    logger: logging.Logger

    @abc.abstractmethod
    def create_publisher(self, msgtype: str, topic: str, qos: QoS) -> PublisherHandle:
        ...

    @abc.abstractmethod
    def create_subscription(self, msgtype: str, topic: str, callback: Callable[[Any], None],
                            qos: QoS) -> SubscriptionHandle:
        ...

    @abc.abstractmethod
    def create_timer(self, period_s: float, callback: Callable[[], None]) -> TimerHandle:
        ...

    #: the node's on-set-parameters check (`Node._check_parameter_set`): name, value ->
    #: None (accepted and applied) or the reason of a refusal
    parameters_callback: Callable[[str, Any], str | None] | None = None

    def set_parameters_callback(self, callback: Callable[[str, Any], str | None]) -> None:
        """Install the check every later set of a parameter goes through (rclpy: an
        on-set-parameters callback, so `ros2 param set` is checked too)."""
        self.parameters_callback = callback

    def check_parameter(self, name: str, value: Any) -> str | None:
        callback = self.parameters_callback
        return callback(name, value) if callback is not None else None

    @abc.abstractmethod
    def declare_parameter(self, name: str, default: Any, description: str = '',
                          spec: Any = None) -> Any:
        """Declare a parameter; returns its value (override from params file / -p, or default).
        `spec` (a qail_ros.runtime.params.ParameterSpec) describes it further (read-only,
        constraints) for runtimes that publish descriptors."""

    @abc.abstractmethod
    def get_parameter(self, name: str) -> Any:
        ...

    @abc.abstractmethod
    def set_parameter(self, name: str, value: Any) -> None:
        """Set a declared parameter after `check_parameter` accepted it; ParameterError
        naming the reason when it refused."""

    @abc.abstractmethod
    def now_ns(self) -> int:
        """Current time of the node's clock in integer nanoseconds."""

    @abc.abstractmethod
    def destroy(self) -> None:
        ...

    def resolve_topic(self, topic: str) -> str:
        """Apply namespace and remappings; returns the absolute topic name."""
        return topic if topic.startswith('/') else f'{self.namespace.rstrip("/")}/{topic}'


class Runtime(abc.ABC):
    """A ROS 2 client library implementation."""

    name: str = 'abstract'

    @abc.abstractmethod
    def init(self, args: list[str] | None = None) -> list[str]:
        """Initialise (idempotent). Returns the arguments that were not ROS arguments."""

    @abc.abstractmethod
    def create_node_handle(self, node_name: str, namespace: str = '',
                           cli_args: list[str] | None = None) -> NodeHandle:
        ...

    @abc.abstractmethod
    def spin(self, nodes: list, duration_s: float | None = None) -> None:
        """Run callbacks of `nodes` until shutdown, Ctrl-C (KeyboardInterrupt propagates) or
        `duration_s` seconds."""

    @abc.abstractmethod
    def spin_once(self, nodes: list, timeout_s: float = 0.1) -> None:
        ...

    @abc.abstractmethod
    def ok(self) -> bool:
        ...

    @abc.abstractmethod
    def shutdown(self) -> None:
        ...

    def request_shutdown(self) -> None:
        """Ask `spin` to return soon (from a callback: a node whose work is done); the
        caller of spin then cleans the nodes up as after Ctrl-C."""
        raise NotImplementedError
