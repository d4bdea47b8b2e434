"""cilrs_policy: CARLA camera + speed + navigation command -> vehicle control, latest frame only.

Runs a CILRS engine (qail_ros.engines: FP32 torch / onnxruntime, W8A8 onnxruntime, W4A4 on
int8 kernels, TensorRT) loaded in on_configure from `engine` (a file in models/ or any path)
and the JSON manifest next to it. The topics are carla-ros-bridge's, so it drops into an
existing CARLA ROS 2 setup.

Subscribes
  /carla/ego_vehicle/rgb_front/image   sensor_msgs/Image (best effort, depth 1; `camera_topic`).
                 Latest-frame policy: the callback only keeps the newest frame; frames replaced
                 before inference (or dropped by the queue) are counted. Inference runs on a
                 worker thread (qail_ros.nodes.latest_frame), never in the camera callback.
                 Frames of another size are resized (nearest neighbour) to the engine's input.
  /carla/ego_vehicle/speedometer       std_msgs/Float32, m/s (carla-ros-bridge's speedometer
                 pseudo-sensor; `speed_topic`). Latest value is used; 0 until one arrives.
  /carla/ego_vehicle/navigation_command  std_msgs/Int8 (`command_topic`): CARLA RoadOption
                 value (VOID=-1, LEFT=1, RIGHT=2, STRAIGHT=3, LANEFOLLOW=4, CHANGELANELEFT=5,
                 CHANGELANERIGHT=6), as the route planner of CARLA's agents gives it.
                 carla-ros-bridge has no such topic: a route follower publishes it. Until one
                 arrives `default_command` (LANEFOLLOW) is used.

Publishes (one message each per inference)
  /carla/ego_vehicle/vehicle_control_cmd  carla_msgs/CarlaEgoVehicleControl (`control_topic`):
                 throttle = max(accel, 0), brake = max(-accel, 0), steer; header.stamp is the
                 camera frame's stamp (the input this control answers), frame_id the camera's.
  ~/raw_outputs  std_msgs/Float64MultiArray (policy_io): the selected branch's raw outputs
                 (Beta head: alpha_accel, alpha_steer, beta_accel, beta_steer; else accel,
                 steer), name 'cilrs_<head>_<command index>'.
  ~/policy_timing std_msgs/Float64MultiArray (policy_io): input stamp, start/end, latency and
                 its parts (preprocess, inference, postprocess), frame age, frames dropped.

Fail-safe (qail_ros.nodes.policy_base): on an invalid frame, an inference error, no valid
frame for `input_timeout_s`, while loading and at shutdown it publishes the safe command on
the control topic: throttle 0, steer 0, brake `safe_brake` (1), stamp 0 (it answers no frame,
so env_bridge in synchronous mode still waits for the real answer). /diagnostics at 1 Hz.

Parameters: `CILRSPolicy.PARAMETERS` below (engine, threads, expect_precision and the topics
are read-only) and the common ones of PolicyNode; the descriptions are in the specs.
"""
from __future__ import annotations

import sys

import numpy as np

from qail_ros import messages
from qail_ros.errors import ParameterError
from qail_ros.nodes.policy_base import PolicyNode, PolicyOutputs, zero_stamp_header
from qail_ros.runtime import run_node
from qail_ros.runtime.params import ParameterSpec

__all__ = ['CILRSPolicy', 'main', 'DEFAULT_ENGINE']

DEFAULT_ENGINE = 'models/cilrs-highway/cilrs_highway_w8a8_ort.onnx'  # shipped, trained
CONTROL_TYPE = 'carla_msgs/msg/CarlaEgoVehicleControl'


class CILRSPolicy(PolicyNode):
    """Runs a CILRS engine on the newest camera frame; see the module docstring."""

    NODE_NAME = 'cilrs_policy'
    OUTPUTS = 'controls'
    SAFE_COMMAND = 'brake (throttle 0, steer 0, brake safe_brake)'
    PARAMETERS = (
        ParameterSpec('engine', DEFAULT_ENGINE, 'CILRS engine file (manifest <file>.json next '
                      'to it)', read_only=True, attr='engine_file'),
        ParameterSpec('threads', 1, 'CPU threads of the engine', min=1, read_only=True),
        ParameterSpec('default_command', 4, 'RoadOption until a command arrives (4 = '
                      'LANEFOLLOW)'),
        ParameterSpec('expect_precision', '', "refuse engines of another precision ('' = "
                      'any)', read_only=True),
        ParameterSpec('camera_topic', '/carla/ego_vehicle/rgb_front/image', read_only=True),
        ParameterSpec('speed_topic', '/carla/ego_vehicle/speedometer', read_only=True),
        ParameterSpec('command_topic', '/carla/ego_vehicle/navigation_command',
                      read_only=True),
        ParameterSpec('control_topic', '/carla/ego_vehicle/vehicle_control_cmd',
                      read_only=True),
        ParameterSpec('safe_brake', 1.0, 'brake of the safe command', min=0.0, max=1.0),
    )

    def __init__(self, **kwargs):
        from qail_ros.msg_defs import register_carla_msgs
        register_carla_msgs()
        self.engine = None
        self.config = None
        self.speed_mps = 0.0
        self.last_control = None
        self._frame_id = ''
        super().__init__(**kwargs)
        self.command = int(self.default_command)

    def check_parameters(self) -> None:
        if not self.engine_file:
            raise ParameterError(f"node '{self.get_name()}': engine must name an engine file")

    def input_topic(self) -> str:
        return self.camera_topic

    def create_outputs(self) -> None:
        self.control_pub = self.create_publisher(CONTROL_TYPE, self.control_topic, 10)

    def create_inputs(self) -> None:
        self.speed_sub = self.create_subscription('std_msgs/msg/Float32', self.speed_topic,
                                                  self.speed_callback, 10)
        self.command_sub = self.create_subscription('std_msgs/msg/Int8', self.command_topic,
                                                    self.command_callback, 10)

    # -- engine ---------------------------------------------------------------------------------
    def load(self) -> None:
        from qail_ros.cilrs.config import CILRSConfig
        engine, path = self.load_engine_file('cilrs')
        try:
            self.config = CILRSConfig.from_dict(engine.manifest.architecture['config'])
        except (ValueError, KeyError) as exc:
            raise ParameterError(f"node '{self.get_name()}': engine: {exc}") from None
        warm = engine.warmup(2)
        self.engine = engine
        c = self.config
        self.get_logger().info(
            f'CILRS ResNet-{c.resnet} {c.width}x{c.height}, {c.head} head: {engine.precision} '
            f'on {engine.backend} ({path.name}, {engine.file_size() / 1e6:.1f} MB), loaded in '
            f'{engine.load_s:.2f} s, warm-up {warm:.2f} s, {self.threads} thread(s)')

    # -- callbacks ------------------------------------------------------------------------------
    def speed_callback(self, msg) -> None:
        self.speed_mps = float(msg.data)

    def command_callback(self, msg) -> None:
        self.command = int(msg.data)

    # -- inference ------------------------------------------------------------------------------
    def preprocess(self, msg) -> dict[str, np.ndarray]:
        """Image message + latest speed -> the engine's normalised inputs."""
        from qail_ros.cilrs.config import preprocess_frame
        from qail_ros.image import to_numpy
        return preprocess_frame(to_numpy(msg, desired='rgb8'), self.speed_mps, self.config)

    def to_inputs(self, msg):
        command = self.command
        return command, self.preprocess(msg)

    def run(self, inputs):
        command, tensors = inputs
        return command, self.engine.infer(tensors)

    def to_outputs(self, msg, result) -> PolicyOutputs:
        from qail_ros.cilrs.config import command_index, postprocess, select_branch
        command, outputs = result
        raw = select_branch(outputs['branches'], command)
        throttle, steer, brake, _ = postprocess(raw, self.config.head)
        control = messages.new(
            CONTROL_TYPE,
            header=messages.new('std_msgs/msg/Header', stamp=msg.header.stamp,
                                frame_id=msg.header.frame_id),
            throttle=throttle, steer=steer, brake=brake)
        self._frame_id = msg.header.frame_id
        self.last_control = control
        name = f'cilrs_{self.config.head}_{command_index(command, self.config.num_branches)}'
        return PolicyOutputs(
            messages=[(self.control_pub, control)], raw=raw, raw_name=name, value=control,
            log=(f'throttle {throttle:.2f} steer {steer:+.2f} brake {brake:.2f} (command '
                 f'{command}, speed {self.speed_mps:.1f} m/s)'))

    def safe_outputs(self) -> list:
        return [(self.control_pub, messages.new(
            CONTROL_TYPE, header=zero_stamp_header(self._frame_id), throttle=0.0, steer=0.0,
            brake=float(self.safe_brake)))]


def main(args=None) -> int:
    return run_node(CILRSPolicy, args)


if __name__ == '__main__':
    sys.exit(main())
