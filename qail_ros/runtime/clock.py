"""Simulated time for the embedded runtime: `use_sim_time:=true` makes a node run on /clock.

rclpy honours use_sim_time itself (its clock and timers follow /clock). The embedded runtime
does it here: a node whose `use_sim_time` parameter is true subscribes to `/clock`
(rosgraph_msgs/msg/Clock, what `qail-ros bag play --clock` and `ros2 bag play --clock`
publish) and then

* `now()` / `now_ns()` return the newest /clock time (0 before the first, as in ROS 2), so
  header stamps, watchdogs and latency figures computed from them are on sim time;
* its timers fire when sim time passes their deadlines (one call per /clock message per due
  timer, missed periods skipped as ROS 2 does), not on the wall clock.

Node calls `attach(node)` once; nothing changes for a node without use_sim_time.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from qail_ros.runtime.api import PeriodicTimer

__all__ = ['SimClock', 'SimTimer', 'attach', 'use_sim_time', 'CLOCK_TOPIC', 'CLOCK_TYPE']

CLOCK_TOPIC = '/clock'
CLOCK_TYPE = 'rosgraph_msgs/msg/Clock'


def use_sim_time(handle: Any) -> bool:
    """The node's use_sim_time override (params file / -p), as a bool."""
    value = getattr(handle, 'parameter_overrides', {}).get('use_sim_time', False)
    if isinstance(value, str):
        return value.strip().lower() == 'true'
    return bool(value)


class SimTimer(PeriodicTimer):
    """A timer on sim time (the TimerHandle methods nodes use)."""

    def __init__(self, clock: 'SimClock', period_s: float, callback: Callable[[], None]):
        super().__init__(period_s, callback)
        self._clock = clock
        self.next_ns: int | None = None     # set from the first /clock

    def cancel(self) -> None:
        self._canceled = True

    def reset(self) -> None:
        self._canceled = False
        now = self._clock.now_ns()
        self.next_ns = now + self.period_ns if self._clock.started else None

    def time_until_next_call(self) -> float | None:
        if self._canceled or self.next_ns is None:
            return None
        return max(0, self.next_ns - self._clock.now_ns()) / 1e9

    def _tick(self, now: int) -> None:
        if self._canceled:
            return
        if self.next_ns is None:
            self.next_ns = now + self.period_ns
            return
        if now < self.next_ns:
            return
        missed = (now - self.next_ns) // self.period_ns
        self.skipped += missed
        self.next_ns += (missed + 1) * self.period_ns
        self.fired += 1
        self.callback()


class SimClock:
    """ROS time from /clock for one node."""

    def __init__(self):
        self._ns = 0
        self.started = False
        self.timers: list[SimTimer] = []
        self._lock = threading.Lock()

    def now_ns(self) -> int:
        return self._ns

    def create_timer(self, period_s: float, callback: Callable[[], None]) -> SimTimer:
        timer = SimTimer(self, period_s, callback)
        if self.started:
            timer.next_ns = self._ns + timer.period_ns
        self.timers.append(timer)
        return timer

    def clock_callback(self, msg: Any) -> None:
        ns = int(msg.clock.sec) * 1_000_000_000 + int(msg.clock.nanosec)
        with self._lock:
            if self.started and ns < self._ns:      # time jumped back (a looping bag)
                for timer in self.timers:
                    timer.next_ns = None
            self._ns = ns
            self.started = True
        for timer in list(self.timers):
            timer._tick(ns)
        self.timers = [t for t in self.timers if not t.is_canceled()]


def attach(node: Any) -> SimClock | None:
    """Give `node` a SimClock when use_sim_time is set on the embedded runtime, else None."""
    handle = node._handle
    if getattr(node.runtime, 'name', '') != 'embedded' or not use_sim_time(handle):
        return None
    from qail_ros.runtime.api import QoS
    clock = SimClock()
    # reliable, volatile (as rclpy's time source); depth 10 keeps /clock in step with data
    handle.create_subscription(CLOCK_TYPE, CLOCK_TOPIC, clock.clock_callback, QoS(depth=10))
    return clock
