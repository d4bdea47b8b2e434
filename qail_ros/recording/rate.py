"""Per-topic rate limits: record a 30 Hz camera at 5 Hz while actions are kept whole.

The decision uses the message's own stamp when it has one (so the same frames are kept
whatever the transport's jitter), else the receive time. A message is kept when at least
`1 / rate_hz` has passed since the last kept one, with a small tolerance so a 30 Hz stream
limited to 10 Hz keeps every third frame rather than every fourth.
"""
from __future__ import annotations

from qail_ros.errors import ParameterError

__all__ = ['RateLimiter', 'parse_rate_limits']

#: Fraction of the period a message may come early and still be kept (camera jitter).
TOLERANCE = 0.1


class RateLimiter:
    """Keeps at most `rate_hz` messages per second of stamp time (0 = keep everything)."""

    def __init__(self, rate_hz: float):
        if rate_hz < 0:
            raise ParameterError(f'rate limit must be >= 0 Hz, not {rate_hz}')
        self.rate_hz = float(rate_hz)
        self.period_ns = int(round(1e9 / rate_hz)) if rate_hz > 0 else 0
        self._last: int | None = None
        self.kept = 0
        self.skipped = 0

    def keep(self, stamp_ns: int) -> bool:
        """True if a message with this stamp is to be recorded."""
        if self.period_ns == 0:
            self.kept += 1
            return True
        last = self._last
        if last is not None and stamp_ns < last:      # stamps went back (sim reset): restart
            last = None
        if last is None or stamp_ns - last >= self.period_ns * (1.0 - TOLERANCE):
            # Advance on the grid, not to the stamp, so the kept rate does not drift low.
            self._last = stamp_ns if last is None or stamp_ns - last > 2 * self.period_ns \
                else last + self.period_ns
            self.kept += 1
            return True
        self.skipped += 1
        return False

    def reset(self) -> None:
        self._last = None


def parse_rate_limits(entries: list[str] | tuple[str, ...]) -> dict[str, float]:
    """['image_raw:5', '/joint_states:50'] -> {'image_raw': 5.0, '/joint_states': 50.0}."""
    out: dict[str, float] = {}
    for entry in entries or ():
        if not entry:
            continue
        topic, sep, rate = str(entry).rpartition(':')
        try:
            value = float(rate)
        except ValueError:
            value = -1.0
        if not sep or not topic or value < 0:
            raise ParameterError(
                f"rate_limits entry '{entry}' is not 'topic:hz' (e.g. 'image_raw:5'); "
                'hz >= 0, 0 = no limit')
        out[topic] = value
    return out
