"""env_bridge on the embedded runtime in one process: it publishes camera, speed and command on
carla-ros-bridge's topics, waits for the control answering each frame (synchronous mode) and
applies it to the simulated car."""
import json

import numpy as np
import pytest

pytest.importorskip('highway_env', reason='env_bridge needs highway-env '
                    '(pip install highway-env==1.12.1)')

from qail_ros import messages  # noqa: E402
from qail_ros.errors import ParameterError  # noqa: E402
from qail_ros.image import to_numpy  # noqa: E402
from qail_ros.nodes.env_bridge import EnvBridge  # noqa: E402
from qail_ros.runtime import Node  # noqa: E402

CAMERA = '/carla/ego_vehicle/rgb_front/image'
CONTROL = '/carla/ego_vehicle/vehicle_control_cmd'


class Driver(Node):
    """Plays the policy: answers each camera frame with a fixed control, stamped like it."""

    def __init__(self, throttle=0.0, steer=0.0, brake=0.0, **kwargs):
        from qail_ros.msg_defs import register_carla_msgs
        register_carla_msgs()
        super().__init__('driver', **kwargs)
        self.control = (throttle, steer, brake)
        self.images, self.speeds, self.commands, self.episodes = [], [], [], []
        self.pub = self.create_publisher('carla_msgs/msg/CarlaEgoVehicleControl', CONTROL, 10)
        self.create_subscription('sensor_msgs/msg/Image', CAMERA, self.image_callback, 10)
        self.create_subscription('std_msgs/msg/Float32', '/carla/ego_vehicle/speedometer',
                                 lambda m: self.speeds.append(m.data), 10)
        self.create_subscription('std_msgs/msg/Int8', '/carla/ego_vehicle/navigation_command',
                                 lambda m: self.commands.append(m.data), 10)
        self.create_subscription('std_msgs/msg/String', '/env_bridge/episode',
                                 lambda m: self.episodes.append(json.loads(m.data)), 10)

    def image_callback(self, msg):
        self.images.append(msg)
        t, s, b = self.control
        self.pub.publish(messages.new(
            'carla_msgs/msg/CarlaEgoVehicleControl',
            header=messages.new('std_msgs/msg/Header', stamp=msg.header.stamp,
                                frame_id=msg.header.frame_id),
            throttle=t, steer=s, brake=b))


def make_bridge(*params):
    args = ['--ros-args', '-p', 'image_width:=64', '-p', 'image_height:=32',
            '-p', 'rate_hz:=200.0', '-p', 'density:=empty']
    for p in params:
        args += ['-p', p]
    node = EnvBridge(cli_args=args)
    node.on_configure()
    return node


def test_publishes_camera_speed_command_and_applies_braking(rt):
    driver = Driver(brake=1.0)
    bridge = make_bridge()
    bridge.on_activate()
    try:
        assert rt.spin_until(lambda: len(driver.images) >= 12, 20.0), len(driver.images)
    finally:
        bridge.on_deactivate()
        bridge.on_cleanup()
    frame = to_numpy(driver.images[-1])
    assert frame.shape == (32, 64, 3) and frame.dtype == np.uint8 and frame.std() > 10
    assert driver.images[-1].header.frame_id == 'ego_vehicle/rgb_front'
    assert driver.commands[0] == 4   # LANEFOLLOW on an empty highway
    # synchronous: every step answered one frame, so the brake acted from the first step on
    assert bridge.controls_received >= bridge.steps >= 11
    assert driver.speeds[0] == pytest.approx(25.0, abs=0.5)   # highway start speed
    speeds = np.asarray(driver.speeds)
    assert np.all(np.diff(speeds[:10]) < -0.5)   # 8 m/s^2 full brake: -0.8 m/s per step
    assert speeds[-1] < speeds[0] - 8.0


def test_autopilot_runs_episodes_and_reports_them(rt):
    driver = Driver()
    bridge = make_bridge('autopilot:=true', 'episodes:=1', 'town:=roundabout')
    bridge.on_activate()
    try:
        assert rt.spin_until(lambda: driver.episodes, 60.0)
    finally:
        bridge.on_deactivate()
        bridge.on_cleanup()
    result = driver.episodes[0]
    assert result['episode']['success'] is True
    assert result['metrics']['success_rate'] == 1.0
    assert {1, 2, 3} & set(driver.commands), 'no roundabout turn command was published'


def test_shutdown_when_done_ends_the_spin_after_the_episodes(rt):
    import time
    driver = Driver()
    bridge = make_bridge('autopilot:=true', 'episodes:=1', 'shutdown_when_done:=true')
    bridge.on_activate()
    t0 = time.monotonic()
    try:
        rt.spin(duration_s=60.0)   # returns when the bridge requests the shutdown
    finally:
        bridge.on_deactivate()
        bridge.on_cleanup()
    assert time.monotonic() - t0 < 50.0
    assert len(bridge.results) == 1 and bridge.results[0]['success'] is True
    assert len(driver.episodes) == 1   # the last episode message went out before the end


def test_bad_parameters_are_named(rt):
    with pytest.raises(ParameterError, match="town must be one of highway, merge, roundabout"):
        make_bridge('town:=Town01')
