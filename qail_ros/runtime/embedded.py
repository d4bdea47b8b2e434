"""EmbeddedRuntime: a ROS 2-compatible client library that needs no ROS install.

Used when rclpy is not importable (or with `QAIL_ROS_RUNTIME=embedded`). It gives nodes what
rclpy gives them, with the same semantics where it matters:

* **Names.** `__node:=` / `__ns:=` / `from:=to` remaps from `--ros-args` (global ones from
  `init(argv)`, then the node's own `cli_args`), `~` expansion, rcl-style topic resolution.
* **Parameters.** Overrides from `--params-file` sections that match the node's fully qualified
  name (wildcards as in rcl), then `-p name:=value`; `declare_parameter` returns the override or
  the default.
* **Executor.** One single-threaded executor per process: every subscription and timer callback
  of every node runs on the thread that calls `spin()`. Transport threads only enqueue and wake
  it through a condition variable (no polling). Timers are drift-free (deadline += period).
* **QoS.** `keep_last` depth is a per-subscription bounded queue that drops the oldest message
  and counts drops (`subscription.dropped`); `keep_all` is unbounded. `transient_local`
  publishers replay their last `depth` messages to late local subscriptions.
* **Intra-process (composition).** A publish hands the *same Python object* to subscriptions in
  this process, never serialising it. CDR is produced only when a subscriber in another process
  matches (Zenoh matching status), so a composed pipeline pays no serialisation cost.
* **Between processes / machines**: Zenoh with rmw_zenoh's key expressions, attachment and
  liveliness tokens (qail_ros.runtime.zenoh_transport). Set `QAIL_ROS_TRANSPORT=none` for a
  purely in-process runtime (unit tests).

Like rclpy, an exception raised by a callback propagates out of `spin()`.
"""
from __future__ import annotations

import collections
import heapq
import itertools
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from qail_ros.errors import ParameterError, TransportError
from qail_ros.messages import deserialize, get_class
import qail_ros.runtime.params as _params
from qail_ros.runtime.api import (NodeHandle, PeriodicTimer, PublisherHandle, QoS, Runtime,
                                  SubscriptionHandle)
from qail_ros.runtime.logs import make_node_logger, ros_log_line

if TYPE_CHECKING:
    from qail_ros.runtime.zenoh_transport import ZenohTransport

__all__ = ['EmbeddedRuntime', 'EmbeddedNodeHandle', 'EmbeddedPublisher', 'EmbeddedSubscription',
           'EmbeddedTimer', 'Executor', 'resolve_name', 'ros_log_line']

#: Longest single wait of the executor; only bounds how late a signal from another thread
#: could be noticed if the platform did not interrupt the wait (work itself wakes it at once).
_MAX_WAIT_S = 0.5


# ------------------------------------------------------------------------------------------
# names
# ------------------------------------------------------------------------------------------
def _normalize_namespace(ns: str | None) -> str:
    ns = (ns or '').strip()
    if not ns or ns == '/':
        return '/'
    return '/' + ns.strip('/')


def _expand(name: str, node_name: str, namespace: str) -> str:
    """rcl name expansion: absolute stays, `~` is the node's FQN, relative joins the namespace."""
    if not name:
        raise ValueError('topic name must not be empty')
    fqn = _params.fully_qualified_name(node_name, namespace)
    if name.startswith('~'):
        name = fqn + name[1:]
    elif not name.startswith('/'):
        name = f'{namespace.rstrip("/")}/{name}'
    if '//' in name or (len(name) > 1 and name.endswith('/')):
        raise ValueError(f"invalid topic name '{name}'")
    return name


def resolve_name(name: str, node_name: str, namespace: str,
                 remaps: dict[str, str] | None = None) -> str:
    """Expand a topic name and apply remaps (rcl rules: a rule matches the expanded name).

    A rule `node:from:=to` only applies to the node called `node`.
    """
    resolved = _expand(name, node_name, namespace)
    for src, dst in (remaps or {}).items():
        if ':' in src:
            who, src = src.split(':', 1)
            if who != node_name:
                continue
        if src.startswith('__'):
            continue
        if _expand(src, node_name, namespace) == resolved:
            return _expand(dst, node_name, namespace)
    return resolved


# ------------------------------------------------------------------------------------------
# executor
# ------------------------------------------------------------------------------------------
class _Serialized:
    """CDR bytes from another process, deserialised only when a callback takes them."""

    __slots__ = ('data',)

    def __init__(self, data: bytes):
        self.data = data


class EmbeddedTimer(PeriodicTimer):
    """A periodic timer whose deadlines are `start + k * period` (no drift)."""

    def __init__(self, executor: 'Executor', period_s: float, callback: Callable[[], None],
                 owner: 'EmbeddedNodeHandle | None' = None):
        super().__init__(period_s, callback)
        self.owner = owner
        self._executor = executor
        self.next_ns = time.monotonic_ns() + self.period_ns

    def cancel(self) -> None:
        self._canceled = True
        self._executor.wake()

    def reset(self) -> None:
        """Restart the period from now (rclpy's Timer.reset)."""
        self._canceled = False
        self._executor.reschedule(self, time.monotonic_ns() + self.period_ns)

    def time_until_next_call(self) -> float | None:
        return None if self._canceled else max(0, self.next_ns - time.monotonic_ns()) / 1e9


class Executor:
    """Single-threaded executor: a ready queue of subscriptions and a heap of timers.

    `enqueue` may be called from any thread; callbacks run only inside `spin_once` / `spin`.
    """

    def __init__(self):
        # An RLock knows its owner, so spin_once can tell whether a Ctrl-C that arrived while
        # the wait re-acquired the lock left it unheld (see the end of spin_once).
        self._cond = threading.Condition(threading.RLock())
        self._ready: collections.deque = collections.deque()
        self._timers: list[tuple[int, int, EmbeddedTimer]] = []
        self._seq = itertools.count()
        self._stopped = False
        self._last_was_timer = False
        self.thread_id: int | None = None

    # -- producers (any thread) -------------------------------------------------------------
    def enqueue(self, sub: 'EmbeddedSubscription', item: Any) -> None:
        with self._cond:
            queue = sub.queue
            if sub.depth and len(queue) >= sub.depth:
                queue.popleft()
                sub.dropped += 1
            queue.append(item)
            sub.received += 1
            self._ready.append(sub)
            self._cond.notify()

    def add_timer(self, timer: EmbeddedTimer) -> None:
        self.reschedule(timer, timer.next_ns)

    def reschedule(self, timer: EmbeddedTimer, next_ns: int) -> None:
        with self._cond:
            timer.next_ns = next_ns
            heapq.heappush(self._timers, (next_ns, next(self._seq), timer))
            self._cond.notify()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def restart(self) -> None:
        with self._cond:
            self._stopped = False

    def clear(self) -> None:
        with self._cond:
            self._ready.clear()
            self._timers.clear()

    # -- the consumer (the spinning thread) -------------------------------------------------
    def spin_once(self, timeout_s: float | None) -> bool:
        """Run at most one callback, waiting up to `timeout_s` (None: until work or stop).

        Returns True if a callback ran.
        """
        deadline = None if timeout_s is None else time.monotonic_ns() + int(timeout_s * 1e9)
        self.thread_id = threading.get_ident()
        cond = self._cond
        cond.acquire()
        try:
            while not self._stopped:
                now = time.monotonic_ns()
                timers = self._timers
                # Drop heap entries of cancelled timers and stale entries of reset ones.
                while timers and (timers[0][2].is_canceled()
                                  or timers[0][0] != timers[0][2].next_ns):
                    heapq.heappop(timers)
                # One callback per call. A due timer and queued messages take turns, so that
                # neither a timer slower than its period nor a flood of messages starves the
                # other (rclpy's executor serves both kinds in each wait-set round).
                ready = self._ready
                while ready and (not ready[0].queue or ready[0].destroyed):
                    ready.popleft()
                timer_due = bool(timers) and timers[0][0] <= now
                if timer_due and not (ready and self._last_was_timer):
                    _due, _s, timer = heapq.heappop(timers)
                    nxt = timer.next_ns + timer.period_ns
                    if nxt <= now:  # fell behind: skip missed periods, keep the phase
                        missed = (now - nxt) // timer.period_ns + 1
                        timer.skipped += missed
                        nxt += missed * timer.period_ns
                    timer.next_ns = nxt
                    heapq.heappush(timers, (nxt, next(self._seq), timer))
                    self._last_was_timer = True
                    cond.release()
                    try:
                        timer.fired += 1
                        timer.callback()
                    finally:
                        cond.acquire()
                    return True
                if ready:
                    sub = ready.popleft()
                    item = sub.queue.popleft()
                    self._last_was_timer = False
                    cond.release()
                    try:
                        sub.deliver(item)
                    finally:
                        cond.acquire()
                    return True
                wait_ns = None
                if timers:
                    wait_ns = timers[0][0] - now
                if deadline is not None:
                    left = deadline - now
                    if left <= 0:
                        return False
                    wait_ns = left if wait_ns is None else min(wait_ns, left)
                wait_s = _MAX_WAIT_S if wait_ns is None else min(wait_ns / 1e9, _MAX_WAIT_S)
                cond.wait(wait_s)
            return False
        finally:
            try:
                cond.release()
            except RuntimeError:  # KeyboardInterrupt hit while wait() re-acquired the lock
                pass

    @property
    def stopped(self) -> bool:
        return self._stopped


# ------------------------------------------------------------------------------------------
# publishers / subscriptions
# ------------------------------------------------------------------------------------------
class EmbeddedSubscription(SubscriptionHandle):
    """A subscription: a bounded queue drained by the executor into `callback`."""

    def __init__(self, node: 'EmbeddedNodeHandle', msgtype: str, topic: str,
                 callback: Callable[[Any], None], qos: QoS):
        self.node = node
        self.msgtype = msgtype
        self.topic = topic
        self.callback = callback
        self.qos = qos
        # keep_last depth 0 means "system default", which rmw_zenoh sets to 42 (qos.cpp).
        self.depth = (qos.depth or 42) if qos.history == 'keep_last' else 0
        self.queue: collections.deque = collections.deque()
        self.dropped = 0
        self.received = 0
        self.destroyed = False
        self.remote = None  # the Zenoh side, if any

    def deliver(self, item: Any) -> None:
        if isinstance(item, _Serialized):
            item = deserialize(item.data, self.msgtype)
        self.callback(item)

    def get_publisher_count(self) -> int:
        return self.node.runtime.count_publishers(self.topic)

    def destroy(self) -> None:
        self.node.runtime._remove_subscription(self)


class EmbeddedPublisher(PublisherHandle):
    """A publisher: same-object delivery in-process, CDR over Zenoh only when matched."""

    def __init__(self, node: 'EmbeddedNodeHandle', msgtype: str, topic: str, qos: QoS):
        self.node = node
        self.msgtype = msgtype
        self.topic = topic
        self.qos = qos
        self.published = 0
        self._bus = node.runtime.bus
        self._executor = node.runtime.executor
        self._history: collections.deque | None = (
            collections.deque(maxlen=max(1, qos.depth))
            if qos.durability == 'transient_local' else None)
        self.remote = None  # the Zenoh side, if any
        self.destroyed = False

    def publish(self, msg: Any) -> None:
        if self.destroyed:
            raise TransportError(f"publisher on '{self.topic}' was destroyed; create a new one")
        mtype = getattr(msg, '__msgtype__', None)
        if mtype != self.msgtype:
            raise TypeError(f"publisher on '{self.topic}' sends {self.msgtype}, "
                            f'got {mtype or type(msg).__name__}')
        self.published += 1
        enqueue = self._executor.enqueue
        for sub in self._bus.get(self.topic, ()):
            if sub.msgtype == self.msgtype:
                enqueue(sub, msg)
        if self._history is not None:
            self._history.append(msg)
        remote = self.remote
        if remote is not None:
            remote.publish(msg)

    def get_subscription_count(self) -> int:
        return self.node.runtime.count_subscriptions(self.topic)

    def destroy(self) -> None:
        self.node.runtime._remove_publisher(self)


# ------------------------------------------------------------------------------------------
# node handle
# ------------------------------------------------------------------------------------------
class EmbeddedNodeHandle(NodeHandle):
    """One node on the embedded runtime (what `Node` wraps)."""

    def __init__(self, runtime: 'EmbeddedRuntime', name: str, namespace: str,
                 ros: _params.RosArgs):
        if not name or '/' in name:
            raise ParameterError(f"invalid node name '{name}': a name has no '/'")
        self.runtime = runtime
        self.name = name
        self.namespace = namespace
        self.fqn = _params.fully_qualified_name(name, namespace)
        self.remaps = dict(ros.remaps)
        self.logger = make_node_logger(self.fqn, ros.log_level)
        self._overrides: dict[str, Any] = {}
        for path in ros.params_files:
            self._overrides.update(_params.params_for_node(_params.load_params_file(path),
                                                           self.fqn))
        self._overrides.update(ros.params)
        self._values: dict[str, Any] = {}
        self.descriptions: dict[str, str] = {}
        self.publishers: list[EmbeddedPublisher] = []
        self.subscriptions: list[EmbeddedSubscription] = []
        self.timers: list[EmbeddedTimer] = []
        self.destroyed = False
        self.remote = None  # the node's liveliness token, if any

    # -- names ------------------------------------------------------------------------------
    def resolve_topic(self, topic: str) -> str:
        return resolve_name(topic, self.name, self.namespace, self.remaps)

    # -- communication ------------------------------------------------------------------------
    def create_publisher(self, msgtype: str, topic: str, qos: QoS) -> EmbeddedPublisher:
        self._check_alive()
        get_class(msgtype)  # an unknown type fails here, with the known ones named
        pub = EmbeddedPublisher(self, msgtype, self.resolve_topic(topic), qos)
        self.runtime._add_publisher(pub)
        self.publishers.append(pub)
        return pub

    def create_subscription(self, msgtype: str, topic: str, callback: Callable[[Any], None],
                            qos: QoS) -> EmbeddedSubscription:
        self._check_alive()
        get_class(msgtype)
        sub = EmbeddedSubscription(self, msgtype, self.resolve_topic(topic), callback, qos)
        self.runtime._add_subscription(sub)
        self.subscriptions.append(sub)
        return sub

    def create_timer(self, period_s: float, callback: Callable[[], None]) -> EmbeddedTimer:
        self._check_alive()
        if period_s <= 0:
            raise ValueError(f'timer period must be > 0 s, not {period_s}')
        timer = EmbeddedTimer(self.runtime.executor, period_s, callback, owner=self)
        self.runtime.executor.add_timer(timer)
        self.timers.append(timer)
        return timer

    # -- parameters ---------------------------------------------------------------------------
    def declare_parameter(self, name: str, default: Any, description: str = '',
                          spec: Any = None) -> Any:
        if name in self._values:
            raise ParameterError(f"parameter '{name}' of node '{self.name}' is already declared")
        value = self._overrides.get(name, default)
        self._values[name] = value
        self.descriptions[name] = description
        return value

    def get_parameter(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise ParameterError(f"node '{self.name}' has no parameter '{name}'; declare it "
                                 'with declare_parameter first') from None

    def set_parameter(self, name: str, value: Any) -> None:
        if name not in self._values:
            raise ParameterError(f"node '{self.name}' has no parameter '{name}'; declare it "
                                 'with declare_parameter first')
        reason = self.check_parameter(name, value)
        if reason:
            raise ParameterError(f"node '{self.name}' refused parameter '{name}' = {value!r}: "
                                 f'{reason}')
        self._values[name] = value

    @property
    def parameter_overrides(self) -> dict[str, Any]:
        return dict(self._overrides)

    # -- clock --------------------------------------------------------------------------------
    def now_ns(self) -> int:
        return time.time_ns()

    # -- teardown -----------------------------------------------------------------------------
    def destroy(self) -> None:
        if self.destroyed:
            return
        self.destroyed = True
        for timer in self.timers:
            timer.cancel()
        for pub in self.publishers:
            self.runtime._remove_publisher(pub)
        for sub in self.subscriptions:
            self.runtime._remove_subscription(sub)
        self.runtime._remove_node(self)

    def _check_alive(self) -> None:
        if self.destroyed:
            raise TransportError(f"node '{self.fqn}' was destroyed; create a new node")


# ------------------------------------------------------------------------------------------
# runtime
# ------------------------------------------------------------------------------------------
class EmbeddedRuntime(Runtime):
    """The embedded ROS 2-compatible runtime (see the module docstring).

    `transport`: 'zenoh' (inter-process, the default) or 'none' (in-process only); the default
    comes from `QAIL_ROS_TRANSPORT`.
    """

    name = 'embedded'

    def __init__(self, transport: str | None = None):
        choice = (transport or os.environ.get('QAIL_ROS_TRANSPORT', 'zenoh')).strip().lower()
        if choice not in ('zenoh', 'none'):
            raise TransportError(f"QAIL_ROS_TRANSPORT must be 'zenoh' or 'none', not '{choice}'")
        self.transport_kind = choice
        self.executor = Executor()
        #: topic -> tuple of local subscriptions (copy-on-write: publish reads without a lock)
        self.bus: dict[str, tuple[EmbeddedSubscription, ...]] = {}
        self._publishers: dict[str, tuple[EmbeddedPublisher, ...]] = {}
        self.nodes: list[EmbeddedNodeHandle] = []
        self._lock = threading.RLock()
        self._initialized = False
        self._global = _params.RosArgs()
        self._transport: ZenohTransport | None = None
        self._transport_failed = False

    # -- lifecycle ----------------------------------------------------------------------------
    def init(self, args: list[str] | None = None) -> list[str]:
        with self._lock:
            rest = list(args or [])
            if args is not None:
                ros, rest = _params.split_ros_args(args)
                if not self._initialized or ros != _params.RosArgs():
                    self._global = ros
            if not self._initialized:
                self._initialized = True
                self.executor.restart()
            return rest

    def ok(self) -> bool:
        return self._initialized and not self.executor.stopped

    def request_shutdown(self) -> None:
        self.executor.stop()

    def shutdown(self) -> None:
        with self._lock:
            if not self._initialized:
                return
            self._initialized = False
            self.executor.stop()
            for node in list(self.nodes):
                node.destroy()
            self.executor.clear()
            transport, self._transport = self._transport, None
            self._transport_failed = False
        if transport is not None:
            transport.close()

    # -- nodes --------------------------------------------------------------------------------
    def create_node_handle(self, node_name: str, namespace: str = '',
                           cli_args: list[str] | None = None) -> EmbeddedNodeHandle:
        if not self._initialized:
            self.init()
        own, _rest = _params.split_ros_args(cli_args or [])
        g = self._global
        ros = _params.RosArgs(
            remaps={**g.remaps, **own.remaps},
            node_name=own.node_name or g.node_name,
            namespace=own.namespace or g.namespace,
            params={**g.params, **own.params},
            params_files=list(dict.fromkeys(g.params_files + own.params_files)),
            log_level=own.log_level or g.log_level)
        name = ros.node_name or node_name
        ns = _normalize_namespace(ros.namespace if ros.namespace is not None else namespace)
        node = EmbeddedNodeHandle(self, name, ns, ros)
        with self._lock:
            if any(n.fqn == node.fqn for n in self.nodes):
                node.logger.warning('a node named %s already exists in this process; '
                                    'rename one with -r __node:=NAME', node.fqn)
            self.nodes.append(node)
        transport = self._get_transport()
        if transport is not None:
            transport.add_node(node)
        return node

    def _remove_node(self, node: EmbeddedNodeHandle) -> None:
        with self._lock:
            if node in self.nodes:
                self.nodes.remove(node)
            transport = self._transport
        if transport is not None:
            transport.remove_node(node)

    # -- spinning -----------------------------------------------------------------------------
    def spin(self, nodes: list | None = None, duration_s: float | None = None) -> None:
        """Run callbacks until shutdown, Ctrl-C (propagates) or `duration_s` seconds.

        The process has one executor: callbacks of every node of this runtime run here, like
        an rclpy SingleThreadedExecutor holding all of them; `nodes` is accepted for the
        Runtime interface.
        """
        if not self._initialized:
            self.init()
        end = None if duration_s is None else time.monotonic() + float(duration_s)
        executor = self.executor
        while not executor.stopped:
            if end is None:
                executor.spin_once(None)
            else:
                left = end - time.monotonic()
                if left <= 0:
                    return
                executor.spin_once(left)

    def spin_once(self, nodes: list | None = None, timeout_s: float = 0.1) -> None:
        if not self._initialized:
            self.init()
        self.executor.spin_once(timeout_s)

    def spin_until(self, predicate: Callable[[], bool], timeout_s: float,
                   check_every_s: float = 0.01) -> bool:
        """Spin until `predicate()` is true or `timeout_s` passed; returns its last value.

        The predicate is checked after every callback and at least every `check_every_s`
        (it may depend on things no callback signals, like the graph of other processes).
        """
        end = time.monotonic() + timeout_s
        while not predicate():
            left = end - time.monotonic()
            if left <= 0 or self.executor.stopped:
                return predicate()
            self.executor.spin_once(min(left, check_every_s))
        return True

    # -- the in-process bus -------------------------------------------------------------------
    def _add_publisher(self, pub: EmbeddedPublisher) -> None:
        with self._lock:
            self._publishers[pub.topic] = self._publishers.get(pub.topic, ()) + (pub,)
            for sub in self.bus.get(pub.topic, ()):
                self._check_types(pub, sub)
        transport = self._get_transport()
        if transport is not None:
            transport.add_publisher(pub)

    def _add_subscription(self, sub: EmbeddedSubscription) -> None:
        with self._lock:
            self.bus[sub.topic] = self.bus.get(sub.topic, ()) + (sub,)
            for pub in self._publishers.get(sub.topic, ()):
                self._check_types(pub, sub)
                if (pub._history and sub.qos.durability == 'transient_local'
                        and pub.msgtype == sub.msgtype):
                    for msg in pub._history:
                        self.executor.enqueue(sub, msg)
        transport = self._get_transport()
        if transport is not None:
            transport.add_subscription(sub)

    def _remove_publisher(self, pub: EmbeddedPublisher) -> None:
        with self._lock:
            if pub.destroyed:
                return
            pub.destroyed = True
            left = tuple(p for p in self._publishers.get(pub.topic, ()) if p is not pub)
            if left:
                self._publishers[pub.topic] = left
            else:
                self._publishers.pop(pub.topic, None)
            remote, pub.remote = pub.remote, None
        if remote is not None:
            remote.close()

    def _remove_subscription(self, sub: EmbeddedSubscription) -> None:
        with self._lock:
            if sub.destroyed:
                return
            sub.destroyed = True
            left = tuple(s for s in self.bus.get(sub.topic, ()) if s is not sub)
            if left:
                self.bus[sub.topic] = left
            else:
                self.bus.pop(sub.topic, None)
            remote, sub.remote = sub.remote, None
        if remote is not None:
            remote.close()

    @staticmethod
    def _check_types(pub: EmbeddedPublisher, sub: EmbeddedSubscription) -> None:
        if pub.msgtype != sub.msgtype:
            sub.node.logger.warning(
                "topic '%s' is published as %s but subscribed as %s; they will not be "
                'connected (fix the type on one side)', sub.topic, pub.msgtype, sub.msgtype)

    def count_subscriptions(self, topic: str) -> int:
        local = len(self.bus.get(topic, ()))
        transport = self._transport
        return local + (transport.count_remote(topic, 'MS') if transport is not None else 0)

    def count_publishers(self, topic: str) -> int:
        local = len(self._publishers.get(topic, ()))
        transport = self._transport
        return local + (transport.count_remote(topic, 'MP') if transport is not None else 0)

    def topic_names_and_types(self) -> list[tuple[str, list[str]]]:
        """Topics known in this process and (with Zenoh) on the graph."""
        found: dict[str, set[str]] = collections.defaultdict(set)
        with self._lock:
            for topic, pubs in self._publishers.items():
                found[topic].update(p.msgtype for p in pubs)
            for topic, subs in self.bus.items():
                found[topic].update(s.msgtype for s in subs)
        transport = self._transport
        if transport is not None:
            for topic, mtype in transport.graph_topics():
                found[topic].add(mtype)
        return sorted((t, sorted(v)) for t, v in found.items())

    # -- transport ----------------------------------------------------------------------------
    @property
    def transport(self):
        """The Zenoh transport of this process (None when off or not available)."""
        return self._get_transport()

    def _get_transport(self):
        if self.transport_kind == 'none' or self._transport_failed:
            return None
        if self._transport is not None:
            return self._transport
        with self._lock:
            if self._transport is None and not self._transport_failed:
                from qail_ros.runtime.zenoh_transport import ZenohTransport
                try:
                    self._transport = ZenohTransport(self.executor, enqueue=self._enqueue_remote)
                except TransportError as exc:
                    self._transport_failed = True
                    logging.getLogger('qail_ros.runtime').warning(
                        '%s; continuing in-process only', exc)
                    return None
            return self._transport

    def _enqueue_remote(self, sub: EmbeddedSubscription, data: bytes) -> None:
        if not sub.destroyed:
            self.executor.enqueue(sub, _Serialized(data))
