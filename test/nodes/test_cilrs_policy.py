"""cilrs_policy on the embedded runtime in one process: camera + speed + command in, CARLA
control out with the camera stamp, raw outputs and timing (policy_io), latest-frame drops,
clear engine errors."""
import json
import threading
import time

import numpy as np
import pytest

pytest.importorskip('torch', reason='building the test engines needs torch')
pytest.importorskip('onnxruntime', reason='the node test runs an onnxruntime engine')

from qail_ros import messages, policy_io  # noqa: E402
from qail_ros.cilrs.config import postprocess, select_branch  # noqa: E402
from qail_ros.errors import ParameterError  # noqa: E402
from qail_ros.image import from_numpy  # noqa: E402
from qail_ros.nodes.cilrs_policy import CILRSPolicy  # noqa: E402
from qail_ros.runtime import Node  # noqa: E402

CAMERA = '/carla/ego_vehicle/rgb_front/image'
CONTROL = '/carla/ego_vehicle/vehicle_control_cmd'


@pytest.fixture(scope='module')
def engines(tmp_path_factory):
    import torch

    from qail_ros.cilrs.export import build_engines, synthetic_calibration
    from qail_ros.cilrs.model import build_model, save_checkpoint
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp('cilrs_node')
    model = build_model(seed=2, resnet=18, height=48, width=96)
    source = save_checkpoint(model, root / 'cilrs_node.safetensors')
    return build_engines(source, root / 'engines', kinds=('fp32_ort', 'w8a8_ort'),
                         calibration=synthetic_calibration(model.config, 2))


class Bridge(Node):
    """Plays carla-ros-bridge: publishes camera, speedometer and command; records control."""

    def __init__(self, **kwargs):
        from qail_ros.msg_defs import register_carla_msgs
        register_carla_msgs()   # a ROS bridge has carla_msgs installed
        super().__init__('bridge', **kwargs)
        self.image_pub = self.create_publisher('sensor_msgs/msg/Image', CAMERA, 10)
        self.speed_pub = self.create_publisher('std_msgs/msg/Float32',
                                               '/carla/ego_vehicle/speedometer', 10)
        self.command_pub = self.create_publisher('std_msgs/msg/Int8',
                                                 '/carla/ego_vehicle/navigation_command', 10)
        self.got = {k: [] for k in ('control', 'timing', 'raw')}
        for key, mtype, topic in (
                ('control', 'carla_msgs/msg/CarlaEgoVehicleControl', CONTROL),
                ('timing', 'std_msgs/msg/Float64MultiArray', '/cilrs_policy/policy_timing'),
                ('raw', 'std_msgs/msg/Float64MultiArray', '/cilrs_policy/raw_outputs')):
            self.create_subscription(mtype, topic, self.got[key].append, 10)

    def frame(self, seed, stamp_ns, h=48, w=96):
        pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
        return from_numpy(pixels, 'rgb8', stamp=stamp_ns, frame_id='ego_vehicle/rgb_front')


def make_policy(engine, *params):
    # the normal path; the fail-safe (watchdog, loading) is tested in test_policy_failsafe.py
    args = ['--ros-args', '-p', f'engine:={engine}', '-p', 'log_period_s:=0.0',
            '-p', 'input_timeout_s:=3600.0']
    for p in params:
        args += ['-p', p]
    node = CILRSPolicy(cli_args=args)
    node.on_configure()
    return node


def test_camera_speed_command_in_control_out(rt, engines):
    bridge = Bridge()
    policy = make_policy(engines['w8a8_ort'])
    policy.on_activate()
    try:
        bridge.speed_pub.publish(messages.new('std_msgs/msg/Float32', data=6.0))
        bridge.command_pub.publish(messages.new('std_msgs/msg/Int8', data=1))   # LEFT
        assert rt.spin_until(lambda: policy.command == 1 and policy.speed_mps == 6.0, 5.0)
        stamp = 1_700_000_000_987_654_321
        frame = bridge.frame(0, stamp)
        bridge.image_pub.publish(frame)
        assert rt.spin_until(lambda: all(bridge.got.values()), 20.0), bridge.got
    finally:
        policy.on_deactivate()
    control = bridge.got['control'][0]
    assert messages.type_name(control) == 'carla_msgs/msg/CarlaEgoVehicleControl'
    assert messages.ns_from_time(control.header.stamp) == stamp
    assert control.header.frame_id == 'ego_vehicle/rgb_front'
    assert 0.0 <= control.throttle <= 1.0 and 0.0 <= control.brake <= 1.0
    assert control.throttle * control.brake == 0.0 and -1.0 <= control.steer <= 1.0
    # the same numbers as running the engine by hand on the same inputs, LEFT branch
    outputs = policy.engine.infer(policy.preprocess(frame))
    raw = select_branch(outputs['branches'], 1)
    thr, steer, brake, _ = postprocess(raw, 'beta')
    assert (control.throttle, control.steer, control.brake) == pytest.approx(
        (thr, steer, brake), abs=1e-6)
    stamp_raw, published = policy_io.raw_outputs_from_msg(bridge.got['raw'][0])
    assert stamp_raw == stamp and published.shape == (4,)
    np.testing.assert_allclose(published, raw, rtol=1e-6)
    assert bridge.got['raw'][0].layout.dim[0].label == 'cilrs_beta_0'
    timing = policy_io.timing_from_msg(bridge.got['timing'][0])
    assert timing.stamp_ns == stamp and timing.inference_ms > 0
    assert timing.latency_ms >= timing.inference_ms
    # the speed reached the network: another speed gives other outputs
    policy.speed_mps = 0.0
    assert not np.allclose(policy.engine.infer(policy.preprocess(frame))['branches'],
                           outputs['branches'])


def test_control_serialises_as_carla_msgs_does(rt, engines):
    policy = make_policy(engines['fp32_ort'])
    control = policy.step(Bridge().frame(1, 5_000_000_000))
    raw = messages.serialize(control)
    back = messages.deserialize(raw, 'carla_msgs/msg/CarlaEgoVehicleControl')
    assert back.steer == pytest.approx(control.steer) and back.header.stamp.sec == 5
    fields = [name for name, _ in messages.get_class(
        'carla_msgs/msg/CarlaEgoVehicleControl').__dataclass_fields__.items()
        if not name.startswith('_')]
    assert fields == ['header', 'throttle', 'steer', 'brake', 'hand_brake', 'reverse', 'gear',
                      'manual_gear_shift']


def test_other_image_sizes_are_resized(rt, engines):
    """A 120x200 frame is resized by nearest neighbour (row i*120//48, column j*200//96) to the
    engine's 48x96: its inputs and its control are those of the already-resized frame."""
    policy = make_policy(engines['fp32_ort'])
    big = Bridge().frame(2, 1, h=120, w=200)
    pixels = np.random.default_rng(2).integers(0, 256, (120, 200, 3), dtype=np.uint8)
    picked = pixels[(np.arange(48) * 120 // 48)[:, None], (np.arange(96) * 200 // 96)[None, :]]
    small = from_numpy(np.ascontiguousarray(picked), 'rgb8', stamp=1,
                       frame_id='ego_vehicle/rgb_front')
    inputs = policy.preprocess(big)
    assert inputs['image'].shape == (1, 3, 48, 96)
    np.testing.assert_array_equal(inputs['image'], policy.preprocess(small)['image'])
    c = policy.config
    want = (picked.transpose(2, 0, 1) / 255.0 - np.reshape(c.mean, (3, 1, 1))) / np.reshape(
        c.std, (3, 1, 1))
    np.testing.assert_allclose(inputs['image'][0], want, rtol=1e-5, atol=1e-5)
    a, b = policy.step(big), policy.step(small)
    assert (a.throttle, a.steer, a.brake) == (b.throttle, b.steer, b.brake)
    other = policy.step(Bridge().frame(3, 2, h=120, w=200))   # and the pixels matter
    assert (other.throttle, other.steer, other.brake) != (a.throttle, a.steer, a.brake)


def test_latest_frame_policy_never_blocks_the_camera_and_counts_drops(rt, engines):
    bridge = Bridge()
    policy = make_policy(engines['fp32_ort'])
    real_infer = policy.engine.infer
    release, started = threading.Event(), threading.Event()

    def slow_infer(inputs):
        started.set()
        release.wait(10)
        return real_infer(inputs)

    policy.engine.infer = slow_infer
    policy.on_activate()
    try:
        bridge.image_pub.publish(bridge.frame(0, 1_000))
        assert rt.spin_until(started.is_set, 10.0)
        callback_s = []
        for i in range(1, 11):
            bridge.image_pub.publish(bridge.frame(i, 1_000 + i))
            t = time.perf_counter()
            rt.spin_once(timeout_s=1.0)
            callback_s.append(time.perf_counter() - t)
        assert max(callback_s) < 0.5
        release.set()
        assert rt.spin_until(lambda: len(bridge.got['control']) >= 2, 20.0)
        rt.spin_until(lambda: False, 0.3)
    finally:
        release.set()
        policy.on_deactivate()
    stamps = [messages.ns_from_time(c.header.stamp) for c in bridge.got['control']]
    assert stamps == [1_000, 1_010]
    assert policy.frames_received == 11 and policy.frames_dropped == 9
    assert policy_io.timing_from_msg(bridge.got['timing'][-1]).dropped_frames == 9


def test_engine_problems_are_clear_parameter_errors(rt, engines, tmp_path):
    with pytest.raises(ParameterError, match='engine file .* not found .nor its manifest'):
        make_policy(tmp_path / 'missing.onnx')
    with pytest.raises(ParameterError, match="precision is 'fp32', expected 'w4a4'"):
        make_policy(engines['fp32_ort'], 'expect_precision:=w4a4')
    # a manifest for another architecture
    import shutil

    from qail_ros.engines.manifest import manifest_path
    eng = tmp_path / engines['fp32_ort'].name
    shutil.copyfile(engines['fp32_ort'], eng)
    m = json.loads(manifest_path(engines['fp32_ort']).read_text())
    m['architecture']['name'] = 'openvla'
    manifest_path(eng).write_text(json.dumps(m))
    with pytest.raises(ParameterError, match="architecture is 'openvla', expected 'cilrs'"):
        make_policy(eng)
    with pytest.raises(ParameterError, match='threads must be >= 1'):
        CILRSPolicy(cli_args=['--ros-args', '-p', 'threads:=0'])


def test_config_file_names_only_declared_parameters(rt, engines):
    import yaml

    from qail_ros.share import config_path
    params = yaml.safe_load(config_path('cilrs_drive.yaml').read_text())
    values = params['cilrs_policy']['ros__parameters']
    node = CILRSPolicy(cli_args=['--ros-args', '-p', f'engine:={engines["fp32_ort"]}'])
    assert set(values) <= set(node.declared_parameters)
    assert values['camera_topic'] == CAMERA and values['control_topic'] == CONTROL
