"""The fail-safe of the policy-node base on the embedded runtime, one test per failure kind:
the safe command goes out within input_timeout_s plus one watchdog period, /diagnostics
reports ERROR with the right counter, and normal actions come back after valid input."""
from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip('torch', reason='image_policy runs a torch network')

from qail_ros import messages  # noqa: E402
from qail_ros.errors import ParameterError  # noqa: E402
from qail_ros.image import from_numpy  # noqa: E402
from qail_ros.nodes.image_policy import ImagePolicy  # noqa: E402
from qail_ros.nodes.policy_base import ERROR, OK, STALE, WARN  # noqa: E402
from qail_ros.runtime import Node  # noqa: E402

TIMEOUT_S = 0.4
PERIOD_S = TIMEOUT_S / 4     # the watchdog period
#: slack for the harness's own view (2 shared cores); the node-side bound is exact
SLACK_S = 0.3


class Harness(Node):
    """Camera and instruction in; twist, action, gripper and /diagnostics recorded with the
    time they arrived."""

    def __init__(self, **kwargs):
        super().__init__('harness', **kwargs)
        self.image_pub = self.create_publisher('sensor_msgs/msg/Image', 'image_raw', 10)
        self.instruction_pub = self.create_publisher('std_msgs/msg/String', 'instruction', 10)
        self.twists: list[tuple[float, object]] = []
        self.actions: list = []
        self.grippers: list = []
        self.diags: list = []
        self.create_subscription('geometry_msgs/msg/TwistStamped', 'cmd_twist',
                                 lambda m: self.twists.append((time.monotonic(), m)), 100)
        self.create_subscription('std_msgs/msg/Float32MultiArray', 'action',
                                 self.actions.append, 100)
        self.create_subscription('std_msgs/msg/Float32', 'gripper', self.grippers.append, 100)
        self.create_subscription('diagnostic_msgs/msg/DiagnosticArray', '/diagnostics',
                                 self.diags.append, 100)

    def frame(self, seed: int, stamp_ns: int):
        pixels = np.random.default_rng(seed).integers(0, 256, (32, 40, 3), dtype=np.uint8)
        return from_numpy(pixels, 'rgb8', stamp=stamp_ns, frame_id='camera')

    def safe_after(self, t: float) -> list[float]:
        return [rx for rx, m in self.twists if rx >= t and _stamp(m) == 0]

    def normal_after(self, t: float, stamp: int) -> bool:
        return any(rx >= t and _stamp(m) == stamp for rx, m in self.twists)

    def diagnostics(self, t_count: int = 0):
        """(level, message, values) of every policy status received after the first
        `t_count` arrays."""
        out = []
        for arr in self.diags[t_count:]:
            for st in arr.status:
                if st.name.endswith(': policy'):
                    out.append((st.level, st.message, {kv.key: kv.value for kv in st.values}))
        return out


def _stamp(msg) -> int:
    return messages.ns_from_time(msg.header.stamp)


def _image(encoding='rgb8', width=40, height=32, step=None, data=None, stamp=5):
    from qail_ros.image import ENCODINGS
    info = ENCODINGS.get(encoding)
    bpp = info.channels * info.dtype.itemsize if info else 3
    step = width * bpp if step is None else step
    if data is None:
        data = np.zeros(step * height, np.uint8)
    return messages.new(
        'sensor_msgs/msg/Image',
        header=messages.new('std_msgs/msg/Header', stamp=messages.time_from_ns(stamp),
                            frame_id='camera'),
        height=height, width=width, encoding=encoding, is_bigendian=0, step=step, data=data)


def _nan_frame():
    values = np.full((32, 40), np.nan, np.float32)
    return from_numpy(values, '32FC1', stamp=5, frame_id='camera')


#: fault -> (message maker, the counter that must show it)
BAD_FRAMES = {
    'encoding': (lambda: _image(encoding='weird'), 'rejected_encoding'),
    'short_data': (lambda: _image(data=np.zeros(100, np.uint8)), 'rejected_short_data'),
    'non_finite': (_nan_frame, 'rejected_non_finite'),
    'empty': (lambda: _image(width=0, height=0, data=np.zeros(0, np.uint8)), 'rejected_empty'),
    'oversized': (lambda: _image(width=5000, height=2, data=np.zeros(5000 * 2 * 3, np.uint8)),
                  'rejected_oversized'),
}


def start_policy(*params: str) -> ImagePolicy:
    args = ['--ros-args', '-p', 'log_period_s:=0.0', '-p', 'image_size:=32',
            '-p', f'input_timeout_s:={TIMEOUT_S}', '-p', 'diagnostics_period_s:=0.2',
            '-p', 'max_image_width:=4096']
    for p in params:
        args += ['-p', p]
    node = ImagePolicy(cli_args=args)
    node.on_configure()
    node.on_activate()
    return node


def normal_action(rt, harness, seed, stamp):
    t = time.monotonic()
    harness.image_pub.publish(harness.frame(seed, stamp))
    assert rt.spin_until(lambda: harness.normal_after(t, stamp), 20.0), harness.twists[-3:]


def wait_diag(rt, harness, level, counter=None, value=None, timeout_s=5.0):
    def seen():
        return any(lv == level and (counter is None or vals.get(counter) == str(value))
                   for lv, _m, vals in harness.diagnostics())
    assert rt.spin_until(seen, timeout_s), harness.diagnostics()[-3:]


@pytest.mark.parametrize('fault', sorted(BAD_FRAMES))
def test_invalid_frame_gives_the_safe_command_error_and_recovers(rt, fault):
    make, counter = BAD_FRAMES[fault]
    harness = Harness()
    policy = start_policy()
    try:
        normal_action(rt, harness, 0, 1_000)
        t0 = time.monotonic()
        harness.image_pub.publish(make())
        assert rt.spin_until(lambda: harness.safe_after(t0), 5.0)
        assert harness.safe_after(t0)[0] - t0 <= TIMEOUT_S + PERIOD_S + SLACK_S
        assert policy.failsafe == 'invalid_input' and policy.rejected[fault] == 1
        wait_diag(rt, harness, ERROR, counter, 1)
        safe = [m for _rx, m in harness.twists if _stamp(m) == 0][0]
        assert safe.twist.linear.x == 0 and safe.twist.angular.z == 0
        # the gripper is held: the safe action has zero deltas and the last gripper value
        last_normal = np.asarray(harness.actions[0].data)
        held = np.asarray(harness.actions[-1].data)
        np.testing.assert_array_equal(held[:6], 0.0)
        assert held[6] == pytest.approx(last_normal[6])
        normal_action(rt, harness, 1, 2_000)      # valid input: normal actions again
        assert policy.failsafe is None and policy.failsafe_activations == 1
        # frames keep coming (else the watchdog trips): diagnostics OK again
        n = len(harness.diags)
        for i in range(50):
            harness.image_pub.publish(harness.frame(2, 3_000 + i))
            if rt.spin_until(lambda: any(lv == OK for lv, _m, _v in harness.diagnostics(n)),
                             0.1):
                break
        assert any(lv == OK for lv, _m, _v in harness.diagnostics(n))
    finally:
        policy.on_deactivate()


def test_camera_that_stops_trips_the_watchdog_within_the_timeout(rt):
    harness = Harness()
    policy = start_policy()
    try:
        normal_action(rt, harness, 0, 1_000)
        last_valid = policy._last_valid_ns
        t0 = time.monotonic()
        assert rt.spin_until(lambda: harness.safe_after(t0), 5.0)
        # node side, on its clock: first safe command within timeout + one watchdog period
        # (+ 50 ms for a timer callback that a busy 2-core machine runs late)
        assert policy.failsafe_started_ns - last_valid <= (TIMEOUT_S + PERIOD_S + 0.05) * 1e9
        assert harness.safe_after(t0)[0] - t0 <= TIMEOUT_S + PERIOD_S + SLACK_S
        assert policy.failsafe == 'input_timeout'
        wait_diag(rt, harness, ERROR, 'failsafe', 'input_timeout')
        # repeated while it lasts
        n = len(harness.safe_after(t0))
        rt.spin_until(lambda: False, 3 * PERIOD_S)
        assert len(harness.safe_after(t0)) > n
        normal_action(rt, harness, 1, 2_000)
        assert policy.failsafe is None
    finally:
        policy.on_deactivate()
    assert dict(policy.rejected) == {} and policy.failsafe_activations == 1


def test_inference_error_gives_the_safe_command_and_counts(rt):
    harness = Harness()
    policy = start_policy()
    real = policy.policy.predict_with_raw
    try:
        normal_action(rt, harness, 0, 1_000)

        def broken(frame, instruction):
            raise RuntimeError('engine fell over')
        policy.policy.predict_with_raw = broken
        t0 = time.monotonic()
        harness.image_pub.publish(harness.frame(1, 2_000))
        assert rt.spin_until(lambda: harness.safe_after(t0), 5.0)
        assert policy.failsafe == 'inference_error' and policy.inference_errors == 1
        wait_diag(rt, harness, ERROR, 'inference_errors', 1)
        assert any('engine fell over' in vals['last_error'] for _l, _m, vals in
                   harness.diagnostics())
        policy.policy.predict_with_raw = real
        normal_action(rt, harness, 2, 3_000)
    finally:
        policy.on_deactivate()


def test_no_input_yet_is_stale_with_the_safe_command(rt):
    harness = Harness()
    policy = start_policy()
    try:
        t0 = time.monotonic()
        assert rt.spin_until(lambda: harness.safe_after(t0), 5.0)
        wait_diag(rt, harness, STALE)
        assert not harness.actions   # no gripper was ever commanded: none is sent
        normal_action(rt, harness, 0, 1_000)
    finally:
        policy.on_deactivate()


def test_engine_loading_publishes_the_safe_command(rt, monkeypatch):
    harness = Harness()
    real_load = ImagePolicy.load

    def slow_load(self):
        time.sleep(TIMEOUT_S + 4 * PERIOD_S)
        real_load(self)
    monkeypatch.setattr(ImagePolicy, 'load', slow_load)
    t0 = time.monotonic()
    policy = start_policy()    # on_configure returns after the slow load
    try:
        rt.spin_until(lambda: False, 0.05)
        assert harness.safe_after(t0), 'no safe command while the engine loaded'
        assert any(lv == WARN and 'loading' in msg for lv, msg, _v in harness.diagnostics())
        normal_action(rt, harness, 0, 1_000)
    finally:
        policy.on_deactivate()


def test_shutdown_publishes_the_safe_command(rt):
    harness = Harness()
    policy = start_policy()
    normal_action(rt, harness, 0, 1_000)
    t0 = time.monotonic()
    policy.on_deactivate()
    rt.spin_until(lambda: False, 0.05)
    assert harness.safe_after(t0)


def test_frame_burst_counts_drops_and_warns(rt):
    harness = Harness()
    policy = start_policy('max_rate_hz:=5.0')
    try:
        normal_action(rt, harness, 0, 1_000)
        for i in range(30):
            harness.image_pub.publish(harness.frame(i, 10_000 + i))
            rt.spin_once(timeout_s=0.01)
        wait_diag(rt, harness, WARN)
        assert policy.frames_dropped > 10
        assert int(harness.diagnostics()[-1][2]['inputs_dropped']) == policy.frames_dropped
    finally:
        policy.on_deactivate()


def test_over_long_instruction_is_refused_and_the_previous_one_stays(rt):
    harness = Harness()
    policy = start_policy('instruction:=pick up the red block')
    try:
        normal_action(rt, harness, 0, 1_000)
        harness.instruction_pub.publish(messages.new('std_msgs/msg/String', data='x' * 200_000))
        harness.instruction_pub.publish(messages.new(
            'std_msgs/msg/String', data=' '.join(['word'] * 100)))   # 499 bytes, 100 tokens
        assert rt.spin_until(lambda: policy.instructions_rejected == 2, 5.0)
        assert policy.instruction == 'pick up the red block'
        assert policy.get_parameter('instruction').value == 'pick up the red block'
        wait_diag(rt, harness, WARN, 'instructions_rejected', 2)
        assert 'max_instruction_tokens' in policy.last_error
        normal_action(rt, harness, 1, 2_000)     # still acting, on the old instruction
        harness.instruction_pub.publish(messages.new('std_msgs/msg/String', data='open it'))
        assert rt.spin_until(lambda: policy.instruction == 'open it', 5.0)
    finally:
        policy.on_deactivate()


def test_rejected_frames_are_logged_with_counts_never_silent(rt, caplog):
    from qail_ros.nodes import policy_base
    harness = Harness()
    policy = start_policy()
    policy.problems.period_s = 0.3
    try:
        for _ in range(5):
            harness.image_pub.publish(_image(encoding='weird'))
            rt.spin_once(timeout_s=0.05)
        rt.spin_until(lambda: False, 0.6)
    finally:
        policy.on_deactivate()
    text = caplog.text
    assert "rejected frames: encoding: encoding 'weird'" in text
    n = policy.rejected['encoding'] - 1          # after the first line: counted
    assert n >= 2 and f'{n} rejected frames in ' in text and f'(encoding x{n})' in text
    assert policy_base.PROBLEM_LOG_PERIOD_S == 5.0


def test_max_rate_hz_set_at_run_time_takes_effect_and_precision_is_refused(rt):
    harness = Harness()
    policy = start_policy()
    starts = []
    real = policy.policy.predict_with_raw

    def timed(frame, instruction):
        starts.append(time.monotonic())
        return real(frame, instruction)
    policy.policy.predict_with_raw = timed
    try:
        policy.set_parameter('max_rate_hz', 2.0)     # a running node: the worker slows down
        assert policy.worker.max_rate_hz == 2.0 and policy.max_rate_hz == 2.0
        normal_action(rt, harness, 0, 1_000)
        normal_action(rt, harness, 1, 2_000)
        assert starts[1] - starts[0] >= 0.5 * 0.95
        with pytest.raises(ParameterError, match='max_rate_hz must be >= 0'):
            policy.set_parameter('max_rate_hz', -1.0)
        assert policy.get_parameter('max_rate_hz').value == 2.0
        with pytest.raises(ParameterError, match="'seed' is read-only: a change needs a reload"):
            policy.set_parameter('seed', 3)
        policy.set_parameter('input_timeout_s', 2.0)
        assert policy.input_timeout_s == 2.0
    finally:
        policy.on_deactivate()


def test_vla_precision_cannot_change_on_a_running_node(rt):
    pytest.importorskip('transformers', reason='vla_policy imports the OpenVLA code')
    from qail_ros.nodes.vla_policy import VLAPolicy
    node = VLAPolicy(cli_args=['--ros-args', '-p', 'precision:=fp32'])
    with pytest.raises(ParameterError, match="'precision' is read-only: a change needs a "
                                             'reload; restart the node with precision'):
        node.set_parameter('precision', 'int4')
    assert node.precision == 'fp32' and node.get_parameter('precision').value == 'fp32'
    node.set_parameter('control_period_s', 0.1)       # not read-only: takes effect
    assert node.control_period_s == 0.1


def test_cilrs_safe_command_is_a_full_brake_with_stamp_zero(rt):
    pytest.importorskip('onnxruntime', reason='the shipped CILRS engine is onnxruntime')
    from pathlib import Path

    from qail_ros.msg_defs import register_carla_msgs
    from qail_ros.nodes.cilrs_policy import CILRSPolicy
    register_carla_msgs()
    engine = (Path(__file__).resolve().parents[2] / 'models' / 'cilrs-highway'
              / 'cilrs_highway_w8a8_ort.onnx')
    controls = []
    harness = Node('carla')
    harness.create_subscription('carla_msgs/msg/CarlaEgoVehicleControl',
                                '/carla/ego_vehicle/vehicle_control_cmd', controls.append, 100)
    camera = harness.create_publisher('sensor_msgs/msg/Image',
                                      '/carla/ego_vehicle/rgb_front/image', 10)
    node = CILRSPolicy(cli_args=['--ros-args', '-p', f'engine:={engine}', '-p',
                                 f'input_timeout_s:={TIMEOUT_S}'])
    node.on_configure()
    node.on_activate()
    try:
        pixels = np.zeros((72, 160, 3), np.uint8)
        camera.publish(from_numpy(pixels, 'rgb8', stamp=1_000, frame_id='cam'))
        assert rt.spin_until(lambda: any(_stamp(c) == 1_000 for c in controls), 10.0)
        camera.publish(_image(encoding='rgb8', width=160, height=72,
                              data=np.zeros(10, np.uint8)))        # short data
        assert rt.spin_until(lambda: _stamp(controls[-1]) == 0, 5.0)
        safe = controls[-1]
        assert (safe.throttle, safe.steer, safe.brake) == (0.0, 0.0, 1.0)
        assert node.rejected['short_data'] == 1
        camera.publish(from_numpy(pixels, 'rgb8', stamp=2_000, frame_id='cam'))
        assert rt.spin_until(lambda: _stamp(controls[-1]) == 2_000, 10.0)
    finally:
        node.on_deactivate()


def test_state_policy_wrong_size_state_gives_the_safe_action(rt, tmp_path):
    pytest.importorskip('dm_control', reason='exporting the MLP engine needs dm-control')
    from qail_ros import policy_io
    from qail_ros.nodes.state_policy import StatePolicy
    from qail_ros.physics.export import export_policy
    from qail_ros.physics.models import task_dir
    engine, _ = export_policy(task_dir('cartpole-balance') / 'fp_policy.safetensors', tmp_path,
                              name='fp32')
    actions = []
    harness = Node('bridge')
    harness.create_subscription('std_msgs/msg/Float64MultiArray', '/action', actions.append, 100)
    pub = harness.create_publisher('std_msgs/msg/Float64MultiArray', '/state', 10)
    node = StatePolicy(cli_args=['--ros-args', '-p', f'engine:={engine}', '-p',
                                 f'input_timeout_s:={TIMEOUT_S}'])
    node.on_configure()
    node.on_activate()
    try:
        pub.publish(policy_io.raw_outputs_to_msg(7, np.zeros(3), 'state'))   # 3, not 5 values
        assert rt.spin_until(lambda: actions, 5.0)
        stamp, values = policy_io.raw_outputs_from_msg(actions[-1])
        assert stamp == 0 and np.all(values == 0) and values.shape == (1,)
        assert node.rejected['wrong_size'] == 1 and node.failsafe == 'invalid_input'
        pub.publish(policy_io.raw_outputs_to_msg(8, np.zeros(5), 'state'))
        assert rt.spin_until(lambda: policy_io.raw_outputs_from_msg(actions[-1])[0] == 8, 5.0)
        assert node.failsafe is None
    finally:
        node.on_deactivate()


def test_lost_zenoh_router_shows_in_the_diagnostics_and_its_return(zenoh_runtime,
                                                                   zenoh_endpoint):
    """The router of the process's Zenoh transport goes away: /diagnostics says WARN with the
    router 'lost' and router_losses 1 while frames keep coming; 'connected' once it is back."""
    pytest.importorskip('zenoh', reason='eclipse-zenoh is not installed')
    from qail_ros.runtime import zenoh_transport as zt
    rt = zenoh_runtime
    router = zt.ensure_router(zenoh_endpoint)
    harness = Harness()
    policy = start_policy()
    stamp = [10_000]

    def feed_until(predicate, timeout_s):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            stamp[0] += 1
            harness.image_pub.publish(harness.frame(stamp[0], stamp[0]))
            if rt.spin_until(predicate, 0.05):
                return True
        return predicate()

    def router_status(state, losses):
        return [lv for lv, _m, vals in harness.diagnostics()
                if vals.get('router') == state and vals.get('router_losses') == str(losses)]

    try:
        assert policy.router_state() == ('connected', 0)
        normal_action(rt, harness, 0, 1_000)
        assert feed_until(lambda: router_status('connected', 0), 5.0), \
            harness.diagnostics()[-2:]
        router.stop()
        router = None
        assert feed_until(lambda: WARN in router_status('lost', 1), 15.0), \
            harness.diagnostics()[-2:]
        assert policy.router_state() == ('lost', 1)
        router = zt.ensure_router(zenoh_endpoint)
        assert feed_until(lambda: router_status('connected', 1), 30.0), \
            harness.diagnostics()[-2:]
        assert policy.failsafe is None
    finally:
        policy.on_deactivate()
        if router is not None:
            router.stop()


def test_without_a_zenoh_transport_the_router_is_not_applicable(rt):
    policy = start_policy()
    try:
        assert policy.router_state() == ('n/a', 0)
        _level, _text, values = policy.diagnostics_status()
        assert values['router'] == 'n/a' and values['router_losses'] == 0
    finally:
        policy.on_deactivate()
