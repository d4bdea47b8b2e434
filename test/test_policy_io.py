"""The policy_timing / raw_outputs contract between policy nodes, recorder and monitor."""
import numpy as np
import pytest

from qail_ros import messages, policy_io


def test_timing_round_trip_keeps_the_stamp_exact_through_cdr():
    stamp = 1_763_890_000_123_456_789  # a 2025 epoch in ns: beyond float64's integer range
    t = policy_io.InferenceTiming(stamp_ns=stamp, start_s=1763890000.1250005,
                                  end_s=1763890000.1375005, preprocess_ms=1.5,
                                  inference_ms=10.0, postprocess_ms=1.0, age_ms=20.0,
                                  dropped_frames=3)
    msg = messages.deserialize(messages.serialize(policy_io.timing_to_msg(t)),
                               'std_msgs/msg/Float64MultiArray')
    back = policy_io.timing_from_msg(msg)
    assert back.stamp_ns == stamp
    assert back == t
    assert back.latency_ms == pytest.approx(12.5, abs=1e-3)
    # A generic consumer honouring data_offset sees the named values only.
    assert policy_io.values_by_label(msg)['latency_ms'] == pytest.approx(12.5, abs=1e-3)


def test_timing_from_a_foreign_array_is_rejected():
    with pytest.raises(ValueError, match='policy_timing'):
        policy_io.timing_from_msg(policy_io.labelled_values(['x'], [1.0]))


def test_raw_outputs_keep_shape_and_stamp():
    logits = np.random.default_rng(0).normal(size=(7, 256))
    msg = policy_io.raw_outputs_to_msg(42_000_000_007, logits, name='action_logits')
    assert msg.layout.dim[0].label == 'action_logits' and msg.layout.dim[0].stride == 7 * 256
    stamp, back = policy_io.raw_outputs_from_msg(msg)
    assert stamp == 42_000_000_007
    np.testing.assert_array_equal(back, logits)
