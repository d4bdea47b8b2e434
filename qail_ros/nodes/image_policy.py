"""image_policy: camera frames (+ instruction) -> 7-DoF end-effector action, latest frame only.

The demo policy of the orin_vla launch until the INT4 OpenVLA `vla_policy` node lands. It runs
`qail_ros.policies.ConvActionRegressor`, a small **untrained** convolutional network (seeded
initialisation, or weights from `weights:=file.safetensors`): real tensor work and real latency,
meaningless actions. The topics are the ones vla_policy publishes, so the recorder and the
monitor work with either.

Subscribes
  image_raw      sensor_msgs/Image (best effort, depth 1). Latest-frame policy: the callback only
                 keeps the newest frame; a frame replaced before the policy took it is counted
                 as dropped. Inference runs on a worker thread, never in the camera callback.
  instruction    std_msgs/String: replaces the `instruction` parameter.

Publishes (one message each per inference)
  action           std_msgs/Float32MultiArray, 7 values in [-1, 1]; layout.dim[0].label is
                   'dx,dy,dz,droll,dpitch,dyaw,gripper' (size 7, stride 7). Raw policy output.
  cmd_twist        geometry_msgs/TwistStamped: end-effector velocity command in `frame_id`:
                   linear = action[0:3] * linear_scale (m/s), angular = action[3:6] *
                   angular_scale (rad/s). header.stamp is the camera frame's stamp (the input
                   this action answers).
  gripper          std_msgs/Float32: (action[6] + 1) / 2, 0 = closed, 1 = open.
  ~/policy_timing  std_msgs/Float64MultiArray in the qail_ros.policy_io contract (input stamp,
                   wall-clock start/end, latency_ms = preprocess + inference + postprocess,
                   age_ms = camera stamp -> outputs ready, dropped_frames so far).
  ~/raw_outputs    std_msgs/Float64MultiArray (policy_io): the head's 7 outputs before tanh.

Parameters: instruction, max_rate_hz (0: as fast as frames come), weights, seed, image_size,
num_threads (torch threads), frame_id, linear_scale, angular_scale, log_period_s (0: log every
action).
"""
from __future__ import annotations

import sys
import time

import numpy as np

from qail_ros import messages, policy_io
from qail_ros.errors import ParameterError
from qail_ros.nodes.latest_frame import LatestFramePolicy, LatestFrameWorker, TimingLog
from qail_ros.policies.instruction import ACTION_LABELS
from qail_ros.runtime import Node, QoS, run_node

__all__ = ['ImagePolicy', 'main', 'ACTION_LABELS', 'LATEST_FRAME']

#: Newest frame only: a best-effort subscription that holds one message.
LATEST_FRAME = QoS(depth=1, reliability='best_effort')


class ImagePolicy(LatestFramePolicy, Node):
    """Runs ConvActionRegressor on the newest camera frame; see the module docstring."""

    def __init__(self, **kwargs):
        super().__init__('image_policy', **kwargs)
        self.instruction = self.declare_parameter(
            'instruction', '', 'language instruction (the instruction topic replaces it)').value
        self.max_rate_hz = self.declare_parameter(
            'max_rate_hz', 0.0, 'most inferences per second; 0 = one per new frame').value
        self.weights = self.declare_parameter(
            'weights', '', 'safetensors file from ConvActionRegressor.save(); empty = seeded '
            'untrained weights').value
        self.seed = self.declare_parameter('seed', 0, 'seed of the untrained weights').value
        self.image_size = self.declare_parameter('image_size', 224, 'network input side').value
        self.num_threads = self.declare_parameter('num_threads', 1, 'torch CPU threads').value
        self.frame_id = self.declare_parameter(
            'frame_id', 'base_link', 'frame of the cmd_twist command').value
        self.linear_scale = self.declare_parameter(
            'linear_scale', 0.05, 'm/s of cmd_twist linear at |action| = 1').value
        self.angular_scale = self.declare_parameter(
            'angular_scale', 0.5, 'rad/s of cmd_twist angular at |action| = 1').value
        self.log_period_s = self.declare_parameter(
            'log_period_s', 1.0, 'seconds between action log lines; 0 = every action').value
        self._validate()
        self.policy = None
        self.inferences = 0
        self.last_action: np.ndarray | None = None
        # latest-frame policy, worker thread and rate limit: shared with cilrs_policy
        self.worker = LatestFrameWorker(self.step, name='image_policy',
                                        max_rate_hz=float(self.max_rate_hz),
                                        logger=self.get_logger())
        self.timing_log = TimingLog(max(self.log_period_s, 0.0))

        self.action_pub = self.create_publisher('std_msgs/msg/Float32MultiArray', 'action', 10)
        self.twist_pub = self.create_publisher('geometry_msgs/msg/TwistStamped', 'cmd_twist', 10)
        self.gripper_pub = self.create_publisher('std_msgs/msg/Float32', 'gripper', 10)
        self.timing_pub = self.create_publisher('std_msgs/msg/Float64MultiArray',
                                                '~/policy_timing', 10)
        self.raw_pub = self.create_publisher('std_msgs/msg/Float64MultiArray', '~/raw_outputs',
                                             10)
        self.image_sub = self.create_subscription('sensor_msgs/msg/Image', 'image_raw',
                                                  self.image_callback, LATEST_FRAME)
        self.instruction_sub = self.create_subscription('std_msgs/msg/String', 'instruction',
                                                        self.instruction_callback, 10)

    def _validate(self) -> None:
        problems = []
        if self.max_rate_hz < 0:
            problems.append(f'max_rate_hz must be >= 0, not {self.max_rate_hz}')
        if self.image_size < 16:
            problems.append(f'image_size must be >= 16, not {self.image_size}')
        if self.num_threads < 1:
            problems.append(f'num_threads must be >= 1, not {self.num_threads}')
        if self.log_period_s < 0:
            problems.append(f'log_period_s must be >= 0, not {self.log_period_s}')
        if problems:
            raise ParameterError(f"node '{self.get_name()}': " + '; '.join(problems))

    # -- lifecycle ------------------------------------------------------------------------------
    def on_configure(self) -> None:
        import torch
        from qail_ros.policies.conv_action_regressor import (ConvActionRegressor,
                                                             ConvActionRegressorConfig)
        torch.set_num_threads(int(self.num_threads))
        start = time.perf_counter()
        if self.weights:
            try:
                policy = ConvActionRegressor.load(self.weights)
            except (FileNotFoundError, ValueError) as exc:
                raise ParameterError(f"node '{self.get_name()}': weights: {exc}") from None
            origin = f'weights {self.weights}'
        else:
            policy = ConvActionRegressor(ConvActionRegressorConfig(
                image_size=int(self.image_size), seed=int(self.seed)))
            origin = f'UNTRAINED seeded weights (seed {self.seed})'
        policy.eval()
        policy.predict(np.zeros((policy.config.image_size, policy.config.image_size, 3),
                                np.uint8), self.instruction)  # warm-up: first call is slow
        self.policy = policy
        self.get_logger().info(
            f'ConvActionRegressor ({policy.num_parameters() / 1e6:.2f} M params, {origin}, '
            f'{policy.config.image_size}x{policy.config.image_size} input) ready in '
            f'{time.perf_counter() - start:.2f} s; instruction: {self.instruction!r}')

    def on_cleanup(self) -> None:
        self.policy = None

    # -- callbacks ------------------------------------------------------------------------------
    def instruction_callback(self, msg) -> None:
        text = msg.data
        if text != self.instruction:
            self.get_logger().info(f'new instruction: {text!r}')
        self.instruction = text
        self.set_parameter('instruction', text)

    # -- inference ------------------------------------------------------------------------------
    def step(self, msg) -> np.ndarray:
        """Run the policy on one sensor_msgs/Image and publish every output; returns the action."""
        from qail_ros.image import to_numpy
        if self.policy is None:
            raise RuntimeError('image_policy is not configured (on_configure loads the policy)')
        start_s = time.time()
        t0 = time.perf_counter()
        frame = to_numpy(msg, desired='rgb8')
        t1 = time.perf_counter()
        action, raw = self.policy.predict_with_raw(frame, self.instruction)
        t2 = time.perf_counter()
        outputs = self._outputs(msg, action)
        t3 = time.perf_counter()
        stamp_ns = messages.ns_from_time(msg.header.stamp)
        age_ms = (self.now_ns() - stamp_ns) / 1e6 if stamp_ns > 0 else float('nan')
        self.inferences += 1
        self.last_action = action
        timing = policy_io.InferenceTiming(
            stamp_ns=stamp_ns, start_s=start_s, end_s=start_s + (t3 - t0),
            preprocess_ms=(t1 - t0) * 1e3, inference_ms=(t2 - t1) * 1e3,
            postprocess_ms=(t3 - t2) * 1e3, age_ms=age_ms, dropped_frames=self.frames_dropped)
        for pub, out in zip((self.action_pub, self.twist_pub, self.gripper_pub), outputs):
            pub.publish(out)
        self.raw_pub.publish(policy_io.raw_outputs_to_msg(stamp_ns, raw, 'action_pre_tanh'))
        self.timing_pub.publish(policy_io.timing_to_msg(timing))
        self._log(action, timing)
        return action

    def _outputs(self, msg, action: np.ndarray) -> tuple:
        """(action array, TwistStamped, gripper) messages for one action."""
        a = [float(x) for x in action]
        lin, ang = self.linear_scale, self.angular_scale
        twist = messages.new(
            'geometry_msgs/msg/TwistStamped',
            header=messages.new('std_msgs/msg/Header', stamp=msg.header.stamp,
                                frame_id=self.frame_id),
            twist=messages.new(
                'geometry_msgs/msg/Twist',
                linear=messages.new('geometry_msgs/msg/Vector3', x=a[0] * lin, y=a[1] * lin,
                                    z=a[2] * lin),
                angular=messages.new('geometry_msgs/msg/Vector3', x=a[3] * ang, y=a[4] * ang,
                                     z=a[5] * ang)))
        return (policy_io.labelled_values(ACTION_LABELS, action), twist,
                messages.new('std_msgs/msg/Float32', data=(a[6] + 1.0) / 2.0))

    def _log(self, action: np.ndarray, timing: policy_io.InferenceTiming) -> None:
        line = self.timing_log.add(timing)
        if line:
            values = ' '.join(f'{k}={v:+.3f}' for k, v in zip(ACTION_LABELS, action))
            self.get_logger().info(f'action {values} | {line} | frames '
                                   f'{self.frames_received}, dropped {self.frames_dropped}')


def main(args=None) -> int:
    return run_node(ImagePolicy, args)


if __name__ == '__main__':
    sys.exit(main())
