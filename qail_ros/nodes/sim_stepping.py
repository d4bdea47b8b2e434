"""Timer-driven simulator stepping with CARLA-like synchronous mode, shared by the bridges.

    class MyBridge(SynchronousStepping, Node):
        def step(self): ...                      # advance the simulation, then publish
        def publish_observation(self): ...       # publish, then self.observation_sent(stamp_ns)
        def metrics(self): ...                   # summary of self.results (logged at the end)

`declare_stepping_parameters` declares the parameters the mixin reads (`rate_hz`,
`synchronous`, `control_timeout_s`, `episodes`, `shutdown_when_done`); it also needs `results`,
`image_width` and `image_height` on the node.
`on_activate` publishes the first observation and starts a timer at `rate_hz`; each tick calls
`step()` unless, in synchronous mode, the answer to the last observation has not come yet and
`control_timeout_s` has not passed (then the simulation waits, as CARLA's synchronous mode
does for its tick). A command callback calls `answer_received(stamp_ns)` with the stamp of the
observation the command answers (None: unstamped, counts as an answer). `on_deactivate` stops
the timer and logs the episode metrics. After the last episode `episodes_done()` schedules the
shutdown (with `shutdown_when_done`) that `shutdown_when_due()`, first in each tick, carries out.
"""
from __future__ import annotations

import time

__all__ = ['SynchronousStepping', 'SHUTDOWN_GRACE_S']

#: seconds between the last episode's end and the shutdown: the episode_end and the last
#: messages still have to reach the recorder (another process, maybe).
SHUTDOWN_GRACE_S = 0.5


class SynchronousStepping:
    """Mixin for simulator bridge nodes; see the module docstring."""

    _timer = None
    _obs_ns = 0
    _obs_wall = 0.0
    _answered = True
    _shutdown_at = 0.0

    def on_activate(self) -> None:
        self.publish_observation()
        self._timer = self.create_timer(1.0 / float(self.rate_hz), self.timer_callback)

    def on_deactivate(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.results:
            self.get_logger().info(f'{len(self.results)} episodes: {self.metrics()}')

    def declare_stepping_parameters(self, rate_hz: float, rate_text: str, answer: str,
                                    observation: str) -> None:
        """Declare the mixin's parameters; `answer` names what a command is (control,
        action), `observation` what it answers (frame, state)."""
        p = self.declare_parameter
        self.rate_hz = p('rate_hz', rate_hz, rate_text).value
        self.synchronous = p('synchronous', True, f'wait for the {answer} answering the last '
                             f'{observation} before stepping').value
        self.control_timeout_s = p('control_timeout_s', 1.0, f'longest wait for the {answer} '
                                   'in synchronous mode').value
        self.episodes = p('episodes', 0, 'episodes to run; 0 = until stopped').value
        self.shutdown_when_done = p('shutdown_when_done', False, 'end the spin after the last '
                                    'of `episodes`').value

    def stepping_text(self) -> str:
        """'camera WxH, R Hz, synchronous' for the node's configure log."""
        return (f'camera {self.image_width}x{self.image_height}, {self.rate_hz:g} Hz, '
                f"{'synchronous' if self.synchronous else 'asynchronous'}")

    def episodes_done(self) -> None:
        """The last episode ended: with `shutdown_when_done`, shut down after the grace time."""
        if self.shutdown_when_done:
            self._shutdown_at = time.monotonic() + SHUTDOWN_GRACE_S

    def shutdown_when_due(self) -> None:
        """Request the shutdown that `episodes_done` scheduled once its time has come."""
        if self._shutdown_at and time.monotonic() >= self._shutdown_at:
            self._shutdown_at = 0.0
            self.get_logger().info(f'{self.episodes} episodes done; shutting down')
            self.request_shutdown()

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
