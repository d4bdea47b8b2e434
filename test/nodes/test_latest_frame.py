"""LatestFrameWorker: newest message only, drops counted, errors survived, rate limited."""
import threading
import time

import pytest

from qail_ros.nodes.latest_frame import LatestFrameWorker, queue_drops


def test_newest_only_and_replaced_counted():
    seen, gate, started = [], threading.Event(), threading.Event()

    def step(msg):
        started.set()
        gate.wait(5)
        seen.append(msg)

    w = LatestFrameWorker(step, name='t')
    w.start()
    try:
        w.offer(0)
        assert started.wait(5)
        for i in range(1, 6):
            w.offer(i)            # returns at once while step(0) is blocked
        gate.set()
        deadline = time.monotonic() + 5
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        w.stop()
    assert seen == [0, 5] and w.delivered == 6 and w.replaced == 4 and w.processed == 2
    assert not w.running


def test_errors_are_counted_not_fatal():
    calls = []

    def step(msg):
        calls.append(msg)
        if msg == 'bad':
            raise ValueError('broken frame')

    w = LatestFrameWorker(step)
    w.start()
    try:
        w.offer('bad')
        deadline = time.monotonic() + 5
        while w.errors < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        w.offer('good')
        while w.processed < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        w.stop()
    assert calls == ['bad', 'good'] and w.errors == 1 and w.processed == 1


def test_rate_limit_and_validation():
    times = []
    w = LatestFrameWorker(lambda m: times.append(time.monotonic()), max_rate_hz=20.0)
    w.start()
    try:
        for i in range(3):
            w.offer(i)
            deadline = time.monotonic() + 5
            while len(times) < i + 1 and time.monotonic() < deadline:
                time.sleep(0.005)
    finally:
        w.stop()
    assert len(times) == 3
    assert min(b - a for a, b in zip(times, times[1:])) >= 0.045   # 20 Hz = 50 ms apart
    with pytest.raises(ValueError, match='max_rate_hz'):
        LatestFrameWorker(lambda m: None, max_rate_hz=-1)
    assert queue_drops(object()) == 0


def test_timing_log_summarises_a_window_then_starts_a_new_one():
    from qail_ros.nodes.latest_frame import TimingLog
    from qail_ros.policy_io import InferenceTiming

    def timing(latency_ms, age_ms=float('nan')):
        return InferenceTiming(stamp_ns=1, start_s=0.0, end_s=latency_ms / 1e3,
                               inference_ms=latency_ms / 2, age_ms=age_ms)

    every = TimingLog(0.0)  # 0: a line for every inference, no rate
    assert every.add(timing(10.0)) == 'latency 10.0 ms (max 10.0, inference 5.0)'
    slow = TimingLog(3600.0)
    assert slow.add(timing(10.0)) is None and slow.add(timing(30.0, age_ms=40.0)) is None
    slow.period_s = 1e-9     # now due: the line covers both inferences of the window
    line = slow.add(timing(20.0, age_ms=20.0))
    assert line.startswith('latency 20.0 ms (max 30.0, inference 10.0), frame age 30.0 ms, ')
    assert line.endswith(' Hz')
    with pytest.raises(ValueError):
        TimingLog(-1.0)
