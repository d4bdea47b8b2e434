"""Latest-frame inference for policy nodes: the camera callback never waits for the policy.

    self.worker = LatestFrameWorker(self.step, name='cilrs_policy', max_rate_hz=0.0,
                                    logger=self.get_logger())
    def image_callback(self, msg): self.worker.offer(msg)     # O(1), never blocks on inference
    on_activate: self.worker.start();  on_deactivate: self.worker.stop()

`offer` keeps only the newest message; a message replaced before the worker thread took it is
counted in `replaced` (dropped by the latest-frame policy). The worker thread runs `step(msg)`
on each newest message, at most `max_rate_hz` times a second (0 = as fast as messages come);
an exception in `step` is counted and logged (first, then every 100th), never fatal.
Used by the policy-node base (qail_ros.nodes.policy_base), with `TimingLog`, which
summarises per-inference timing in one log line every `period_s`, and `LATEST_FRAME`, the QoS
of the camera subscriptions. `max_rate_hz` may change while the worker runs (a parameter set
at run time): the next wait uses the new rate.
"""
from __future__ import annotations

import math
import threading
import time
from typing import Any, Callable

from qail_ros.runtime.api import QoS

__all__ = ['LATEST_FRAME', 'LatestFrameWorker', 'TimingLog', 'queue_drops']

#: Newest frame only: a best-effort subscription that holds one message.
LATEST_FRAME = QoS(depth=1, reliability='best_effort')


def queue_drops(subscription: Any) -> int:
    """Messages a keep_last subscription queue dropped (the embedded runtime counts them;
    rclpy does not tell: 0)."""
    return int(getattr(subscription, 'dropped', 0) or 0)


class TimingLog:
    """Collects per-inference timing; every `period_s` returns a one-line summary to log.

        line = self.timing_log.add(timing)       # a policy_io.InferenceTiming
        if line:
            self.get_logger().info(f'action ... | {line} | frames ...')

    `period_s` 0 summarises every inference. `reset()` restarts the window (on activate).
    """

    def __init__(self, period_s: float):
        if period_s < 0:
            raise ValueError(f'log period must be >= 0 s, not {period_s}')
        self.period_s = float(period_s)
        self._window: list[tuple[float, float, float]] = []
        self._last = time.monotonic()

    def reset(self) -> None:
        self._window, self._last = [], time.monotonic()

    def add(self, timing) -> str | None:
        self._window.append((timing.latency_ms, timing.inference_ms, timing.age_ms))
        now = time.monotonic()
        if self.period_s and now - self._last < self.period_s:
            return None
        window, self._window = self._window, []
        elapsed, self._last = now - self._last, now
        lat = [w[0] for w in window]
        inf = [w[1] for w in window]
        ages = [w[2] for w in window if math.isfinite(w[2])]
        age = f', frame age {sum(ages) / len(ages):.1f} ms' if ages else ''
        rate = f', {len(window) / elapsed:.1f} Hz' if self.period_s and elapsed > 0 else ''
        return (f'latency {sum(lat) / len(lat):.1f} ms (max {max(lat):.1f}, inference '
                f'{sum(inf) / len(inf):.1f}){age}{rate}')


class LatestFrameWorker:
    """A worker thread running `step` on the newest offered message."""

    def __init__(self, step: Callable[[Any], Any], *, name: str = 'policy',
                 max_rate_hz: float = 0.0, logger=None):
        if max_rate_hz < 0:
            raise ValueError(f'max_rate_hz must be >= 0, not {max_rate_hz}')
        self.step = step
        self.name = name
        self.max_rate_hz = float(max_rate_hz)
        self.logger = logger
        self.delivered = 0     # messages offered
        self.replaced = 0      # offered but replaced by a newer one before the worker took it
        self.processed = 0     # step() calls that returned
        self.errors = 0        # step() calls that raised
        self._lock = threading.Lock()
        self._latest = None
        self._new = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def offer(self, msg: Any) -> None:
        """Keep `msg` as the newest; called from the subscription callback."""
        with self._lock:
            if self._latest is not None:
                self.replaced += 1
            self._latest = msg
            self.delivered += 1
        self._new.set()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name=f'{self.name}-infer',
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stopping.set()
        self._new.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def set_rate(self, max_rate_hz: float) -> None:
        """Change the rate limit of a running worker (from the next inference on)."""
        if max_rate_hz < 0:
            raise ValueError(f'max_rate_hz must be >= 0, not {max_rate_hz}')
        self.max_rate_hz = float(max_rate_hz)

    def _loop(self) -> None:
        last_start = None
        while not self._stopping.is_set():
            if not self._new.wait(0.2):
                continue
            rate = self.max_rate_hz
            period = 1.0 / rate if rate > 0 else 0.0
            if period and last_start is not None:
                # earliest start of the next inference: the last start + one period
                next_slot = last_start + period
                delay = next_slot - time.monotonic()
                if delay > 0 and self._stopping.wait(delay):
                    break
            with self._lock:
                msg, self._latest = self._latest, None
                self._new.clear()
            if msg is None or self._stopping.is_set():
                continue
            last_start = time.monotonic()
            try:
                self.step(msg)
                self.processed += 1
            except Exception as exc:  # noqa: BLE001 - one bad frame must not stop the policy
                self.errors += 1
                if self.logger is not None and (self.errors == 1 or self.errors % 100 == 0):
                    self.logger.error(f'inference failed ({self.errors} so far): {exc}')
