"""image_policy: camera frames (+ instruction) -> 7-DoF end-effector action, latest frame only.

The demo policy of the orin_vla launch until the INT4 OpenVLA `vla_policy` node lands. It runs
`qail_ros.policies.ConvActionRegressor`, a small **untrained** convolutional network (seeded
initialisation, or weights from `weights:=file.safetensors`), loaded through the engine
registry (architecture 'conv-image-policy', qail_ros.policies.engine): real tensor work and
real latency, meaningless actions. The topics are the ones vla_policy publishes, so the
recorder and the monitor work with either.

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

Fail-safe (qail_ros.nodes.policy_base): on an invalid frame, an inference error, no valid
frame for `input_timeout_s`, while loading and at shutdown it publishes the safe command: a
zero cmd_twist, and (once a gripper value was commanded) the action with zero deltas and the
gripper held (`safe_gripper`: hold | open | close), stamp 0. /diagnostics at 1 Hz.

Parameters: `ImagePolicy.PARAMETERS` below and the common ones of PolicyNode (max_rate_hz,
log_period_s, input_timeout_s, diagnostics_period_s, image and instruction limits); the
descriptions are in the specs (`ros2 param describe`).
"""
from __future__ import annotations

import sys
import time

from qail_ros.errors import ParameterError
from qail_ros.nodes.latest_frame import LATEST_FRAME
from qail_ros.nodes.policy_base import ArmPolicyNode, PolicyOutputs, twist_message
from qail_ros.policies.instruction import ACTION_LABELS, tokenize
from qail_ros.runtime import run_node
from qail_ros.runtime.params import ParameterSpec

__all__ = ['ImagePolicy', 'main', 'ACTION_LABELS', 'LATEST_FRAME', 'twist_message']


class ImagePolicy(ArmPolicyNode):
    """Runs ConvActionRegressor on the newest camera frame; see the module docstring."""

    NODE_NAME = 'image_policy'
    #: safe_gripper -> the gripper action value (the action's last entry, in [-1, 1])
    SAFE_GRIPPER = {'open': 1.0, 'close': -1.0}
    PARAMETERS = (
        ParameterSpec('weights', '', 'safetensors file from ConvActionRegressor.save(); empty '
                      '= seeded untrained weights', read_only=True),
        ParameterSpec('seed', 0, 'seed of the untrained weights', read_only=True),
        ParameterSpec('image_size', 224, 'network input side', min=16, read_only=True),
        ParameterSpec('precision', 'fp32', 'fp32 | bf16 | int8-dynamic (qail_ros.policies.engine)',
                      choices=('fp32', 'bf16', 'int8-dynamic'), read_only=True),
        ParameterSpec('num_threads', 1, 'torch CPU threads', min=1, read_only=True),
        ParameterSpec('frame_id', 'base_link', 'frame of the cmd_twist command'),
        ParameterSpec('linear_scale', 0.05, 'm/s of cmd_twist linear at |action| = 1'),
        ParameterSpec('angular_scale', 0.5, 'rad/s of cmd_twist angular at |action| = 1'),
        ArmPolicyNode.safe_gripper_spec(),
    )

    def load(self) -> None:
        import torch
        from qail_ros.engines import EngineError, load_engine
        torch.set_num_threads(int(self.num_threads))
        start = time.perf_counter()
        try:
            if self.weights:
                engine = load_engine(self.weights, architecture='conv-image-policy',
                                     precision=self.precision, threads=int(self.num_threads))
            else:
                engine = load_engine(None, architecture='conv-image-policy',
                                     config={'image_size': int(self.image_size),
                                             'seed': int(self.seed)},
                                     precision=self.precision, threads=int(self.num_threads))
        except EngineError as exc:
            raise ParameterError(f"node '{self.get_name()}': weights / precision: {exc}") from None
        origin = (f'weights {self.weights}' if self.weights
                  else f'UNTRAINED seeded weights (seed {self.seed})')
        engine.warmup(1, self.instruction)   # the first call is slow: not on a frame
        self.engine, self.policy = engine, engine.model
        size = engine.model.config.image_size
        self.get_logger().info(
            f'ConvActionRegressor ({engine.model.num_parameters() / 1e6:.2f} M params, '
            f'{origin}, {self.precision}, {size}x{size} input) ready in '
            f'{time.perf_counter() - start:.2f} s; '
            f'instruction: {self.instruction!r}')

    def count_instruction_tokens(self, text: str) -> int:
        return len(tokenize(text))

    def gripper_value(self, a6: float) -> float:
        return (a6 + 1.0) / 2.0

    # -- inference ------------------------------------------------------------------------------
    def run(self, frame):
        return self.engine.infer({'image': frame, 'instruction': self.instruction})

    def to_outputs(self, msg, result) -> PolicyOutputs:
        action, raw = result['action'], result['raw']
        a = [float(x) for x in action]
        lin, ang = self.linear_scale, self.angular_scale
        values = ' '.join(f'{k}={v:+.3f}' for k, v in zip(ACTION_LABELS, action))
        return PolicyOutputs(
            messages=self.arm_messages(action, [a[0] * lin, a[1] * lin, a[2] * lin],
                                       [a[3] * ang, a[4] * ang, a[5] * ang], msg.header.stamp),
            raw=raw, raw_name='action_pre_tanh', value=action, log=f'action {values}')


def main(args=None) -> int:
    return run_node(ImagePolicy, args)


if __name__ == '__main__':
    sys.exit(main())
