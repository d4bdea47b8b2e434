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

Parameters: engine, threads, max_rate_hz, default_command, camera_topic, speed_topic,
command_topic, control_topic, log_period_s, expect_precision ('' = any).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from qail_ros import messages, policy_io
from qail_ros.errors import ParameterError
from qail_ros.nodes.latest_frame import LatestFramePolicy, LatestFrameWorker, TimingLog
from qail_ros.runtime import Node, QoS, run_node

__all__ = ['CILRSPolicy', 'main', 'DEFAULT_ENGINE', 'resolve_engine_path']

LATEST_FRAME = QoS(depth=1, reliability='best_effort')
DEFAULT_ENGINE = 'models/cilrs-highway/cilrs_highway_w8a8_ort.onnx'  # shipped, trained
CONTROL_TYPE = 'carla_msgs/msg/CarlaEgoVehicleControl'


def resolve_engine_path(engine: str) -> Path:
    """An absolute/relative path as given, else relative to the package share directory."""
    p = Path(engine).expanduser()
    if p.is_absolute() or p.exists():
        return p
    from qail_ros.share import share_dir
    try:
        shared = share_dir() / engine
    except FileNotFoundError:
        return p
    return shared if shared.exists() else p


class CILRSPolicy(LatestFramePolicy, Node):
    """Runs a CILRS engine on the newest camera frame; see the module docstring."""

    OUTPUTS = 'controls'

    def __init__(self, **kwargs):
        super().__init__('cilrs_policy', **kwargs)
        from qail_ros.msg_defs import register_carla_msgs
        register_carla_msgs()
        p = self.declare_parameter
        self.engine_file = p('engine', DEFAULT_ENGINE,
                             'CILRS engine file (manifest <file>.json next to it)').value
        self.threads = p('threads', 1, 'CPU threads of the engine').value
        self.max_rate_hz = p('max_rate_hz', 0.0,
                             'most inferences per second; 0 = one per new frame').value
        self.default_command = p('default_command', 4,
                                 'RoadOption until a command arrives (4 = LANEFOLLOW)').value
        self.expect_precision = p('expect_precision', '',
                                  "refuse engines of another precision ('' = any)").value
        camera_topic = p('camera_topic', '/carla/ego_vehicle/rgb_front/image').value
        speed_topic = p('speed_topic', '/carla/ego_vehicle/speedometer').value
        command_topic = p('command_topic', '/carla/ego_vehicle/navigation_command').value
        control_topic = p('control_topic', '/carla/ego_vehicle/vehicle_control_cmd').value
        self.log_period_s = p('log_period_s', 1.0, 'seconds between control log lines; 0 = '
                              'every control').value
        self._validate()
        self.engine = None
        self.config = None
        self.speed_mps = 0.0
        self.command = int(self.default_command)
        self.last_control = None
        self.timing_log = TimingLog(max(self.log_period_s, 0.0))
        self.worker = LatestFrameWorker(self.step, name='cilrs_policy',
                                        max_rate_hz=float(self.max_rate_hz),
                                        logger=self.get_logger())
        self.control_pub = self.create_publisher(CONTROL_TYPE, control_topic, 10)
        self.timing_pub = self.create_publisher('std_msgs/msg/Float64MultiArray',
                                                '~/policy_timing', 10)
        self.raw_pub = self.create_publisher('std_msgs/msg/Float64MultiArray', '~/raw_outputs',
                                             10)
        self.image_sub = self.create_subscription('sensor_msgs/msg/Image', camera_topic,
                                                  self.image_callback, LATEST_FRAME)
        self.speed_sub = self.create_subscription('std_msgs/msg/Float32', speed_topic,
                                                  self.speed_callback, 10)
        self.command_sub = self.create_subscription('std_msgs/msg/Int8', command_topic,
                                                    self.command_callback, 10)

    def _validate(self) -> None:
        problems = []
        if not self.engine_file:
            problems.append('engine must name an engine file')
        if self.threads < 1:
            problems.append(f'threads must be >= 1, not {self.threads}')
        if self.max_rate_hz < 0:
            problems.append(f'max_rate_hz must be >= 0, not {self.max_rate_hz}')
        if self.log_period_s < 0:
            problems.append(f'log_period_s must be >= 0, not {self.log_period_s}')
        if problems:
            raise ParameterError(f"node '{self.get_name()}': " + '; '.join(problems))

    # -- lifecycle ------------------------------------------------------------------------------
    def on_configure(self) -> None:
        from qail_ros.cilrs.config import CILRSConfig
        from qail_ros.engines import EngineError, load_engine
        path = resolve_engine_path(self.engine_file)
        expect = {'architecture': 'cilrs'}
        if self.expect_precision:
            expect['precision'] = self.expect_precision
        try:
            engine = load_engine(path, threads=int(self.threads), expect=expect)
            self.config = CILRSConfig.from_dict(engine.manifest.architecture['config'])
        except (EngineError, ValueError, KeyError) as exc:
            raise ParameterError(f"node '{self.get_name()}': engine: {exc}") from None
        warm = engine.warmup(2)
        self.engine = engine
        c = self.config
        self.get_logger().info(
            f'CILRS ResNet-{c.resnet} {c.width}x{c.height}, {c.head} head: {engine.precision} '
            f'on {engine.backend} ({path.name}, {engine.file_size() / 1e6:.1f} MB), loaded in '
            f'{engine.load_s:.2f} s, warm-up {warm:.2f} s, {self.threads} thread(s)')

    def on_cleanup(self) -> None:
        self.engine = None

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

    def step(self, msg):
        """Run the engine on one camera frame and publish control, raw outputs and timing."""
        from qail_ros.cilrs.config import command_index, postprocess, select_branch
        if self.engine is None:
            raise RuntimeError('cilrs_policy is not configured (on_configure loads the engine)')
        start_s = time.time()
        t0 = time.perf_counter()
        command = self.command
        inputs = self.preprocess(msg)
        t1 = time.perf_counter()
        outputs = self.engine.infer(inputs)
        t2 = time.perf_counter()
        raw = select_branch(outputs['branches'], command)
        throttle, steer, brake, _ = postprocess(raw, self.config.head)
        control = messages.new(
            CONTROL_TYPE,
            header=messages.new('std_msgs/msg/Header', stamp=msg.header.stamp,
                                frame_id=msg.header.frame_id),
            throttle=throttle, steer=steer, brake=brake)
        t3 = time.perf_counter()
        stamp_ns = messages.ns_from_time(msg.header.stamp)
        age_ms = (self.now_ns() - stamp_ns) / 1e6 if stamp_ns > 0 else float('nan')
        timing = policy_io.InferenceTiming(
            stamp_ns=stamp_ns, start_s=start_s, end_s=start_s + (t3 - t0),
            preprocess_ms=(t1 - t0) * 1e3, inference_ms=(t2 - t1) * 1e3,
            postprocess_ms=(t3 - t2) * 1e3, age_ms=age_ms, dropped_frames=self.frames_dropped)
        self.control_pub.publish(control)
        name = f'cilrs_{self.config.head}_{command_index(command, self.config.num_branches)}'
        self.raw_pub.publish(policy_io.raw_outputs_to_msg(stamp_ns, raw, name))
        self.timing_pub.publish(policy_io.timing_to_msg(timing))
        self.last_control = control
        self._log(control, timing)
        return control

    def _log(self, control, timing: policy_io.InferenceTiming) -> None:
        line = self.timing_log.add(timing)
        if line:
            self.get_logger().info(
                f'throttle {control.throttle:.2f} steer {control.steer:+.2f} brake '
                f'{control.brake:.2f} (command {self.command}, speed {self.speed_mps:.1f} m/s) '
                f'| {line} | frames {self.frames_received}, dropped {self.frames_dropped}')


def main(args=None) -> int:
    return run_node(CILRSPolicy, args)


if __name__ == '__main__':
    sys.exit(main())
