"""Pair each action with the exact observation it was computed from, by header stamp.

A policy node copies the stamp of the camera frame it acted on into everything it publishes
for that frame (TwistStamped.header.stamp, and the stamp prefix of policy_io's raw_outputs /
policy_timing arrays). Pairing is therefore an exact integer match on nanoseconds, never "the
latest image". Messages from two processes may arrive in either order, so both sides wait in
bounded buffers; what leaves a buffer without a partner is counted as unmatched.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any

__all__ = ['stamp_of', 'StampPairing', 'PairingCounts']


def stamp_of(msg: Any) -> int | None:
    """Integer ns of the input a message belongs to, or None when it carries no stamp.

    header.stamp for stamped messages (0 counts as "no stamp": an unset header); for
    Float32/Float64MultiArray with `layout.data_offset == 2`, the (sec, nanosec) prefix of the
    qail_ros.policy_io contract.
    """
    header = getattr(msg, 'header', None)
    if header is not None:
        stamp = header.stamp
        ns = int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)
        return ns or None
    layout = getattr(msg, 'layout', None)
    if layout is not None and int(layout.data_offset) == 2 and len(msg.data) >= 2:
        from qail_ros import policy_io
        try:
            ns = policy_io.raw_outputs_from_msg(msg)[0]
        except ValueError:           # dims that do not describe the values: still stamped
            ns = int(msg.data[0]) * 1_000_000_000 + int(msg.data[1])
        return ns or None
    return None


@dataclasses.dataclass
class PairingCounts:
    """Per action topic: what happened to its messages."""

    received: int = 0
    matched: int = 0               # an observation with this exact stamp was recorded
    matched_not_recorded: int = 0  # ...was seen but not written (rate limit / pause)
    unmatched: int = 0             # no observation with this stamp ever came (within bounds)
    unstamped: int = 0             # the message carries no stamp: it cannot be paired

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class StampPairing:
    """Exact-stamp pairing between one observation stream and any number of action streams.

    `capacity` bounds both buffers (observation stamps waiting for actions, action stamps
    waiting for their observation). Only stamps are kept, never messages, so the bound costs
    a few bytes per entry. Observations that leave the buffer without any action count as
    `observations_unmatched` (a latest-frame policy skips frames by design, so this is a
    fact to report, not an error); actions that leave without an observation count in their
    topic's `unmatched`.
    """

    def __init__(self, capacity: int = 300):
        if capacity < 1:
            raise ValueError(f'pairing capacity must be >= 1, not {capacity}')
        self.capacity = int(capacity)
        # obs stamp -> [recorded, matched]
        self._obs: collections.OrderedDict[int, list[bool]] = collections.OrderedDict()
        # (topic, stamp) -> arrival order
        self._pending: collections.OrderedDict[tuple[str, int], None] = \
            collections.OrderedDict()
        self.observations = 0
        self.observations_matched = 0
        self.observations_unmatched = 0
        self.topics: dict[str, PairingCounts] = {}

    def _counts(self, topic: str) -> PairingCounts:
        counts = self.topics.get(topic)
        if counts is None:
            counts = self.topics[topic] = PairingCounts()
        return counts

    def observation(self, stamp: int | None, recorded: bool = True) -> None:
        """An observation arrived (`recorded`: it was written to the bag)."""
        if stamp is None:
            return
        self.observations += 1
        entry = self._obs.get(stamp)
        if entry is None:
            entry = self._obs[stamp] = [recorded, False]
        else:
            entry[0] = entry[0] or recorded
        for key in [k for k in self._pending if k[1] == stamp]:
            del self._pending[key]
            self._match(key[0], entry)
        while len(self._obs) > self.capacity:
            _stamp, (_rec, matched) = self._obs.popitem(last=False)
            if not matched:
                self.observations_unmatched += 1

    def action(self, topic: str, stamp: int | None) -> str:
        """An action-side message arrived; returns 'matched', 'pending' or 'unstamped'."""
        counts = self._counts(topic)
        counts.received += 1
        if stamp is None:
            counts.unstamped += 1
            return 'unstamped'
        entry = self._obs.get(stamp)
        if entry is not None:
            self._match(topic, entry)
            return 'matched'
        self._pending[(topic, stamp)] = None
        while len(self._pending) > self.capacity:
            (old_topic, _s), _ = self._pending.popitem(last=False)
            self._counts(old_topic).unmatched += 1
        return 'pending'

    def has_pending(self, stamp: int | None) -> bool:
        """True when an action with this stamp is waiting for its observation."""
        return stamp is not None and any(k[1] == stamp for k in self._pending)

    def mark_recorded(self, stamp: int) -> None:
        """The observation with this stamp was written after all (paired rate limiting)."""
        entry = self._obs.get(stamp)
        if entry is not None:
            entry[0] = True

    def _match(self, topic: str, entry: list[bool]) -> None:
        counts = self._counts(topic)
        if entry[0]:
            counts.matched += 1
        else:
            counts.matched_not_recorded += 1
        if not entry[1]:
            entry[1] = True
            self.observations_matched += 1

    def finish(self) -> None:
        """End of an episode: everything still waiting is unmatched; buffers are emptied."""
        for (topic, _stamp) in self._pending:
            self._counts(topic).unmatched += 1
        self._pending.clear()
        self.observations_unmatched += sum(1 for _r, matched in self._obs.values()
                                           if not matched)
        self._obs.clear()

    @property
    def unmatched_actions(self) -> int:
        return sum(c.unmatched for c in self.topics.values())

    def summary(self) -> dict[str, Any]:
        """Counts as a JSON-able dict (what goes into the episode facts)."""
        return {'observations': self.observations,
                'observations_matched': self.observations_matched,
                'observations_unmatched': self.observations_unmatched,
                'pending_observations': len(self._obs),
                'pending_actions': len(self._pending),
                'topics': {t: c.as_dict() for t, c in sorted(self.topics.items())}}
