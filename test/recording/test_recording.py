"""The recorder's pure core: stamps, pairing counts, rate limits, episode facts, the writer."""
import numpy as np
import pytest

from qail_ros import messages as m
from qail_ros import policy_io
from qail_ros.bag import BagReader
from qail_ros.errors import ParameterError
from qail_ros.recording import (EpisodeInfo, RateLimiter, StampPairing, parse_rate_limits,
                                stamp_of)
from qail_ros.recording.writer import BagWriterThread


def _twist(ns):
    msg = m.new('geometry_msgs/msg/TwistStamped')
    msg.header.stamp = m.time_from_ns(ns)
    return msg


def test_stamp_of_header_policy_io_and_unstamped():
    assert stamp_of(_twist(1_763_890_000_123_456_789)) == 1_763_890_000_123_456_789
    raw = policy_io.raw_outputs_to_msg(1_763_890_000_000_000_001, np.zeros(7))
    assert stamp_of(raw) == 1_763_890_000_000_000_001
    assert stamp_of(policy_io.labelled_values(['a'], [1.0])) is None   # no offset: no stamp
    assert stamp_of(m.new('std_msgs/msg/String', data='x')) is None
    assert stamp_of(_twist(0)) is None                                  # unset header


def test_pairing_counts_matches_and_deliberate_mismatches():
    p = StampPairing(capacity=4)
    for s in (10, 20, 30):
        p.observation(s)
    assert p.action('/act', 20) == 'matched'
    assert p.action('/act', 25) == 'pending'          # no such frame (yet)
    assert p.action('/raw', 40) == 'pending'          # arrives before its frame...
    p.observation(40)                                  # ...and is matched when it comes
    assert p.action('/act', None) == 'unstamped'
    p.observation(50, recorded=False)                  # rate-limited frame
    assert p.action('/act', 50) == 'matched'
    p.finish()
    act, raw = p.topics['/act'], p.topics['/raw']
    assert (act.received, act.matched, act.matched_not_recorded, act.unmatched,
            act.unstamped) == (4, 1, 1, 1, 1)
    assert (raw.matched, raw.unmatched) == (1, 0)
    assert p.observations == 5 and p.observations_matched == 3
    assert p.observations_unmatched == 2               # frames 10 and 30 got no action
    assert p.unmatched_actions == 1


def test_pairing_buffer_is_bounded_and_evictions_count():
    p = StampPairing(capacity=3)
    for s in range(1, 11):
        p.action('/act', s * 1000)                     # actions whose frames never come
    assert p.topics['/act'].unmatched == 7             # 10 - capacity evicted
    for s in range(100, 110):
        p.observation(s)
    assert p.observations_unmatched == 7
    assert p.summary()['pending_actions'] == 3 and p.summary()['pending_observations'] == 3


def test_rate_limiter_keeps_every_sixth_frame_of_30hz_at_5hz():
    lim = RateLimiter(5.0)
    period = 1e9 / 30
    rng = np.random.default_rng(0)
    stamps = [int(k * period + rng.normal(0, 1e6)) + 10**18 for k in range(300)]   # 10 s
    kept = [s for s in stamps if lim.keep(s)]
    assert len(kept) == 50
    assert lim.kept == 50 and lim.skipped == 250
    assert RateLimiter(0).keep(1) and RateLimiter(0).keep(1)
    with pytest.raises(ParameterError):
        RateLimiter(-1)


def test_parse_rate_limits():
    assert parse_rate_limits(['image_raw:5', '/a/b:0.5']) == {'image_raw': 5.0, '/a/b': 0.5}
    with pytest.raises(ParameterError, match='topic:hz'):
        parse_rate_limits(['image_raw'])


def test_episode_metadata_round_trip():
    ep = EpisodeInfo(index=3, session='s', policy_id='conv', precision='fp32',
                     engine_hash='sha256:ab', task='pick the red block', success='true',
                     complete=True, counts={'/image_raw': 10}, start_ns=1, end_ns=2_000_000_001)
    meta = ep.to_metadata()
    assert all(isinstance(v, str) for v in meta.values())
    assert meta['qail_ros.episode.success'] == 'true'
    back = EpisodeInfo.from_metadata(meta)
    assert back == ep and back.duration_s == pytest.approx(2.0)
    assert EpisodeInfo.from_metadata({'other': 'x'}) is None
    assert EpisodeInfo.from_msg(ep.to_msg()) == ep
    with pytest.raises(ValueError):
        EpisodeInfo(index=0, success='maybe')


def test_writer_thread_drops_when_full_and_counts(tmp_path):
    w = BagWriterThread(max_queue_messages=5)          # not started: nothing drains
    w.open_bag(tmp_path / 'b', {'k': 'v'}, {'/s': ('std_msgs/msg/String', None)})
    ok = [w.put('/s', m.new('std_msgs/msg/String', data=str(i)), i + 1) for i in range(8)]
    assert ok == [True] * 5 + [False] * 3
    assert w.stats.dropped == 3 and w.stats.dropped_by_topic == {'/s': 3}
    w.set_metadata({'k': 'w'})
    assert w.stop()                                    # drains in this thread, closes
    with BagReader(tmp_path / 'b') as bag:
        assert [msg.data for _t, _s, msg in bag.messages()] == ['0', '1', '2', '3', '4']
        assert bag.custom_metadata['k'] == 'w'


def test_writer_error_keeps_what_was_written(tmp_path):
    errors = []
    w = BagWriterThread(on_error=errors.append).start()
    w.open_bag(tmp_path / 'ok', {}, {'/s': ('std_msgs/msg/String', None)})
    w.put('/s', m.new('std_msgs/msg/String', data='kept'), 1)
    w.open_bag(tmp_path / 'ok', {}, {})                # exists: BagWriter refuses
    w.put('/s', m.new('std_msgs/msg/String', data='lost'), 2)
    assert w.stop()
    assert errors and 'exists already' in errors[0] and 'intact' in errors[0]
    assert w.stats.failed == 1
    with BagReader(tmp_path / 'ok') as bag:
        assert [msg.data for *_r, msg in bag.messages()] == ['kept']
