"""image_policy on the embedded runtime, in one process (no transport): outputs, stamps,
latest-frame policy, instruction handling, parameters from config/orin_vla.yaml."""
import threading
import time

import numpy as np
import pytest

pytest.importorskip('torch', reason='image_policy runs a torch network')

from qail_ros import messages, policy_io  # noqa: E402
from qail_ros.errors import ParameterError  # noqa: E402
from qail_ros.image import from_numpy  # noqa: E402
from qail_ros.nodes.image_policy import ACTION_LABELS, ImagePolicy  # noqa: E402
from qail_ros.runtime import Node  # noqa: E402
from qail_ros.runtime.node import check_node_parameters  # noqa: E402


class Harness(Node):
    """Publishes camera frames and instructions, records everything image_policy sends."""

    def __init__(self, **kwargs):
        super().__init__('harness', **kwargs)
        self.image_pub = self.create_publisher('sensor_msgs/msg/Image', 'image_raw', 10)
        self.instruction_pub = self.create_publisher('std_msgs/msg/String', 'instruction', 10)
        self.got: dict[str, list] = {
            k: [] for k in ('action', 'twist', 'gripper', 'timing', 'raw')}
        for key, mtype, topic in (
                ('action', 'std_msgs/msg/Float32MultiArray', 'action'),
                ('twist', 'geometry_msgs/msg/TwistStamped', 'cmd_twist'),
                ('gripper', 'std_msgs/msg/Float32', 'gripper'),
                ('timing', 'std_msgs/msg/Float64MultiArray', '/image_policy/policy_timing'),
                ('raw', 'std_msgs/msg/Float64MultiArray', '/image_policy/raw_outputs')):
            self.create_subscription(mtype, topic, self.got[key].append, 10)

    def frame(self, seed: int, stamp_ns: int):
        pixels = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
        return from_numpy(pixels, 'rgb8', stamp=stamp_ns, frame_id='camera')


def make_policy(*params: str) -> ImagePolicy:
    # the normal path; the fail-safe (watchdog, loading) is tested in test_policy_failsafe.py
    args = ['--ros-args', '-p', 'log_period_s:=0.0', '-p', 'input_timeout_s:=3600.0']
    for p in params:
        args += ['-p', p]
    node = ImagePolicy(cli_args=args)
    node.on_configure()
    return node


def test_one_frame_gives_every_output_with_the_input_stamp(rt):
    harness = Harness()
    policy = make_policy('instruction:=pick up the red block', 'frame_id:=tool0')
    policy.on_activate()
    try:
        stamp = 1_700_000_000_123_456_789
        harness.image_pub.publish(harness.frame(0, stamp))
        assert rt.spin_until(lambda: all(harness.got.values()), 20.0), harness.got
    finally:
        policy.on_deactivate()
    action = harness.got['action'][0]
    assert action.layout.dim[0].label == ','.join(ACTION_LABELS)
    assert action.layout.dim[0].size == 7 and action.layout.dim[0].stride == 7
    a = np.asarray(action.data)
    assert a.shape == (7,) and np.all(np.abs(a) <= 1.0)
    twist = harness.got['twist'][0]
    assert messages.ns_from_time(twist.header.stamp) == stamp
    assert twist.header.frame_id == 'tool0'
    assert twist.twist.linear.x == pytest.approx(a[0] * 0.05, rel=1e-5)
    assert twist.twist.angular.z == pytest.approx(a[5] * 0.5, rel=1e-5)
    assert harness.got['gripper'][0].data == pytest.approx((a[6] + 1) / 2, rel=1e-5)
    timing = policy_io.timing_from_msg(harness.got['timing'][0])
    assert timing.stamp_ns == stamp
    assert timing.latency_ms > 0 and timing.inference_ms > 0
    assert timing.latency_ms >= timing.inference_ms
    stamp_raw, raw = policy_io.raw_outputs_from_msg(harness.got['raw'][0])
    assert stamp_raw == stamp and raw.shape == (7,)
    np.testing.assert_allclose(np.tanh(raw), a, atol=1e-6)


def test_latest_frame_policy_never_blocks_the_camera_and_counts_drops(rt):
    harness = Harness()
    policy = make_policy()
    real_predict = policy.policy.predict_with_raw
    release = threading.Event()
    started = threading.Event()

    def slow_predict(frame, instruction):
        started.set()
        release.wait(10)
        return real_predict(frame, instruction)

    policy.policy.predict_with_raw = slow_predict
    policy.on_activate()
    try:
        harness.image_pub.publish(harness.frame(0, 1_000))
        assert rt.spin_until(started.is_set, 10.0)
        # While inference is busy, 10 more frames arrive: the callback returns at once each time.
        callback_s = []
        for i in range(1, 11):
            harness.image_pub.publish(harness.frame(i, 1_000 + i))
            t = time.perf_counter()
            rt.spin_once(timeout_s=1.0)
            callback_s.append(time.perf_counter() - t)
        assert max(callback_s) < 0.5
        release.set()
        assert rt.spin_until(lambda: len(harness.got['twist']) >= 2, 20.0)
        rt.spin_until(lambda: False, 0.3)  # nothing else is queued: no third action
    finally:
        release.set()
        policy.on_deactivate()
    stamps = [messages.ns_from_time(t.header.stamp) for t in harness.got['twist']]
    assert stamps == [1_000, 1_010]  # the newest frame, the 9 in between dropped
    assert policy.frames_received == 11
    assert policy.frames_dropped == 9
    assert policy_io.timing_from_msg(harness.got['timing'][-1]).dropped_frames == 9


def test_rate_limit_waits_a_full_period_after_the_first_frame(rt):
    # max_rate_hz=4: the second inference may start no sooner than 0.25 s after the first
    # (a bug once let it start at once after the first frame)
    harness = Harness()
    policy = make_policy('max_rate_hz:=4.0')
    real_predict = policy.policy.predict_with_raw
    starts = []

    def timed_predict(frame, instruction):
        starts.append(time.monotonic())
        return real_predict(frame, instruction)

    policy.policy.predict_with_raw = timed_predict
    policy.on_activate()
    try:
        harness.image_pub.publish(harness.frame(0, 1_000))
        assert rt.spin_until(lambda: len(harness.got['twist']) >= 1, 10.0)
        harness.image_pub.publish(harness.frame(1, 2_000))
        assert rt.spin_until(lambda: len(harness.got['twist']) >= 2, 10.0)
    finally:
        policy.on_deactivate()
    assert starts[1] - starts[0] >= 0.25 * 0.95, starts


def test_instruction_topic_changes_the_instruction_and_the_action(rt):
    harness = Harness()
    policy = make_policy('instruction:=pick up the red block')
    frame = harness.frame(3, 5)
    first = policy.step(frame)
    harness.instruction_pub.publish(messages.new('std_msgs/msg/String', data='open the drawer'))
    assert rt.spin_until(lambda: policy.instruction == 'open the drawer', 5.0)
    assert policy.get_parameter('instruction').value == 'open the drawer'
    second = policy.step(frame)
    assert not np.allclose(first, second)
    assert np.array_equal(policy.step(frame), second)  # deterministic for the same input


def test_bad_parameters_are_errors(rt):
    with pytest.raises(ParameterError, match='max_rate_hz must be >= 0'):
        ImagePolicy(cli_args=['--ros-args', '-p', 'max_rate_hz:=-1.0'])
    with pytest.raises(ParameterError, match='weights'):
        make_policy('weights:=/nonexistent/policy.safetensors')


def test_orin_vla_config_sets_only_declared_parameters(rt, tmp_path):
    # orin_vla now launches vla_policy: check the image_policy section it used to have
    params = tmp_path / 'image_policy.yaml'
    params.write_text('image_policy:\n  ros__parameters:\n    max_rate_hz: 10.0\n    seed: 0\n'
                      "    weights: ''\n    image_size: 224\n    num_threads: 1\n"
                      '    frame_id: base_link\n    linear_scale: 0.05\n'
                      '    angular_scale: 0.5\n    log_period_s: 1.0\n')
    args = ['--ros-args', '--params-file', str(params)]
    node = ImagePolicy(cli_args=args)
    check_node_parameters(node, args)  # raises on a parameter the node does not declare
    assert node.max_rate_hz == 10.0 and node.log_period_s == 1.0


def test_weights_file_round_trip(rt, tmp_path):
    from qail_ros.policies import ConvActionRegressor, ConvActionRegressorConfig
    path = tmp_path / 'policy.safetensors'
    ConvActionRegressor(ConvActionRegressorConfig(seed=7)).save(path)
    harness = Harness()
    frame = harness.frame(1, 1)
    from_file = make_policy(f'weights:={path}').step(frame)
    seeded = make_policy('seed:=7').step(frame)
    other = make_policy('seed:=8').step(frame)
    np.testing.assert_array_equal(from_file, seeded)
    assert not np.allclose(seeded, other)
