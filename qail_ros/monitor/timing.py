"""Per-inference timing from the policy nodes' `policy_timing` topics.

The contract is qail_ros.policy_io (std_msgs/Float64MultiArray, data_offset 2, labels
TIMING_FIELDS): wall-clock start_s / end_s of each inference. A labelled array that carries only
`latency_ms` (e.g. a Float32MultiArray from a node that predates the contract) is accepted too:
its window is taken to end when the message arrives, which is exact in-process and off by the
transport delay otherwise.
"""
from __future__ import annotations

import dataclasses

from qail_ros import policy_io

__all__ = ['TimingWindow', 'decode_timing']


@dataclasses.dataclass
class TimingWindow:
    start_s: float
    end_s: float
    latency_ms: float
    exact: bool          # True: start/end from the message; False: end = arrival time


def decode_timing(msg, received_s: float) -> TimingWindow | None:
    """The inference window a timing message describes, or None if it is not one."""
    try:
        t = policy_io.timing_from_msg(msg)
        return TimingWindow(t.start_s, t.end_s, t.latency_ms, True)
    except (ValueError, IndexError, AttributeError, TypeError):
        pass
    try:
        values = policy_io.values_by_label(msg)
    except (AttributeError, IndexError, TypeError):
        return None
    latency = values.get('latency_ms')
    if latency is None or latency != latency or latency < 0:
        return None
    return TimingWindow(received_s - latency / 1e3, received_s, latency, False)
