"""Timer-driven simulator stepping with CARLA-like synchronous mode, shared by the bridges.

    class MyBridge(SynchronousStepping, Node):
        def step(self): ...                      # advance the simulation, then publish
        def publish_observation(self): ...       # publish, then self.observation_sent(stamp_ns)
        def metrics(self): ...                   # summary of self.results (logged at the end)

The mixin needs `rate_hz`, `synchronous`, `control_timeout_s` and `results` on the node.
`on_activate` publishes the first observation and starts a timer at `rate_hz`; each tick calls
`step()` unless, in synchronous mode, the answer to the last observation has not come yet and
`control_timeout_s` has not passed (then the simulation waits, as CARLA's synchronous mode
does for its tick). A command callback calls `answer_received(stamp_ns)` with the stamp of the
observation the command answers (None: unstamped, counts as an answer). `on_deactivate` stops
the timer and logs the episode metrics.
"""
from __future__ import annotations

import time

__all__ = ['SynchronousStepping']


class SynchronousStepping:
    """Mixin for simulator bridge nodes; see the module docstring."""

    _timer = None
    _obs_ns = 0
    _obs_wall = 0.0
    _answered = True

    def on_activate(self) -> None:
        self.publish_observation()
        self._timer = self.create_timer(1.0 / float(self.rate_hz), self.timer_callback)

    def on_deactivate(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.results:
            self.get_logger().info(f'{len(self.results)} episodes: {self.metrics()}')

    def observation_sent(self, stamp_ns: int) -> None:
        """Record that the observation stamped `stamp_ns` went out and awaits its answer."""
        self._obs_ns, self._obs_wall, self._answered = stamp_ns, time.monotonic(), False

    def answer_received(self, stamp_ns: int | None) -> None:
        """A command arrived; it answers the last observation if stamped at or after it."""
        if stamp_ns is None or stamp_ns >= self._obs_ns:
            self._answered = True

    @property
    def answered(self) -> bool:
        return self._answered

    def seconds_since_observation(self) -> float:
        return time.monotonic() - self._obs_wall

    def waiting_for_answer(self) -> bool:
        """Synchronous mode, the last observation unanswered, and its timeout not yet over."""
        return (bool(self.synchronous) and not self._answered
                and self.seconds_since_observation() < self.control_timeout_s)
