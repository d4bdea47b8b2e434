"""vla_policy: camera frames + a language instruction -> OpenVLA 7-DoF end-effector action.

Runs an OpenVLA checkpoint (qail_ros.openvla: our own architecture code, no remote code, no
timm) loaded in on_configure from `model_path` (a Hugging Face OpenVLA directory: the shipped
tiny random model `models/openvla-tiny` by default, or the real openvla-7b directory), in
fp32, bf16, or with the Llama backbone INT4 weight-only (qail_ros.quant): `int4` on torch's
CPU int4 kernel, `int4_ort` (the fastest CPU path): the same codes, the whole decoder as one
onnxruntime graph (MatMulNBits kernels, in-place KV cache; qail_ros.quant.ort_llama).
Latest-frame policy on a worker thread (qail_ros.nodes.latest_frame).

Subscribes
  image_raw      sensor_msgs/Image (best effort, depth 1; any encoding qail_ros.image reads,
                 converted to rgb8). Only the newest frame is used; frames replaced before the
                 policy took them, or dropped by the queue, are counted (`dropped_frames`).
  instruction    std_msgs/String: replaces the `instruction` parameter.

Publishes (one message each per inference; every header / stamp prefix is the camera frame's)
  action           std_msgs/Float32MultiArray, the un-normalised action in the data set's
                   units (`unnorm_key`): layout.dim[0].label 'dx,dy,dz,droll,dpitch,dyaw,gripper'.
                   For OpenVLA's data sets: position deltas in metres and rotation deltas
                   (roll, pitch, yaw) in radians of the end effector per control step, in the
                   robot base frame; gripper 0 = close, 1 = open (not un-normalised: OpenVLA's
                   mask leaves it as stored).
  cmd_twist        geometry_msgs/TwistStamped in `frame_id` (default base_link): the step
                   deltas as velocities over one control step, linear = a[0:3] /
                   control_period_s (m/s), angular = a[3:6] / control_period_s (rad/s;
                   Euler-angle rates, a small-angle approximation of the angular velocity).
  gripper          std_msgs/Float32: a[6] clipped to [0, 1] (0 closed, 1 open).
  ~/raw_outputs    std_msgs/Float64MultiArray (policy_io), name 'action_token_logits', shape
                   (7, 256): the logits of the 256 action tokens at each of the 7 decode steps,
                   bin order (bin k <-> token id vocab_size - 1 - k, k = 0 the lowest value).
  ~/policy_timing  std_msgs/Float64MultiArray (policy_io): input stamp, wall-clock start/end,
                   preprocess (decode + resize + tokenise) / inference (towers, prefill, 7
                   decode steps) / postprocess ms, frame age, frames dropped so far.

Parameters: model_path (default: the shipped tiny model), unnorm_key (default 'bridge_orig',
a key of OpenVLA-7B's norm_stats; '' = the checkpoint's only data set), precision
(fp32 | bf16 | int4 | int4_ort), int4_scheme (rtn | awq),
int4_group_size (0 = per channel), int4_weights (a backbone saved by
OpenVLAPolicy.save_int4; empty = quantize at start), lora_weights (QLoRA adapters over
int4_weights, from `qail-ros train-vla`),
device (cpu | cuda: where the int4_ort decoder graph runs; cuda needs onnxruntime-gpu),
vision_engine (an engine of the towers + projector, e.g. a TensorRT fp16 plan built by
`python -m qail_ros.openvla.vision_engine`; '' = the torch towers),
instruction, max_rate_hz, num_threads (torch threads, and the onnxruntime threads for
int4_ort), frame_id, control_period_s, log_period_s.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from qail_ros import messages, policy_io
from qail_ros.errors import ParameterError
from qail_ros.nodes.latest_frame import LatestFramePolicy, LatestFrameWorker, TimingLog
from qail_ros.policies.instruction import ACTION_LABELS
from qail_ros.runtime import Node, QoS, run_node

__all__ = ['VLAPolicy', 'main', 'DEFAULT_MODEL', 'resolve_model_path']

LATEST_FRAME = QoS(depth=1, reliability='best_effort')
DEFAULT_MODEL = 'models/openvla-tiny'


def resolve_model_path(model_path: str) -> Path:
    """An absolute/existing path as given, else relative to the package share directory."""
    p = Path(model_path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    from qail_ros.share import share_dir
    try:
        shared = share_dir() / model_path
    except FileNotFoundError:
        return p
    return shared if shared.exists() else p


class VLAPolicy(LatestFramePolicy, Node):
    """Runs OpenVLA on the newest camera frame; see the module docstring."""

    def __init__(self, **kwargs):
        super().__init__('vla_policy', **kwargs)
        p = self.declare_parameter
        self.model_path = p('model_path', DEFAULT_MODEL, 'OpenVLA checkpoint directory (HF '
                            'layout); relative paths also look in the package share dir').value
        self.unnorm_key = p('unnorm_key', 'bridge_orig', 'data set whose action statistics '
                            "un-normalise the actions ('' = the checkpoint's only one)").value
        self.precision = p('precision', 'fp32', 'fp32 | bf16 | int4 (INT4 weight-only Llama '
                           "backbone, torch's kernel) | int4_ort (same codes, the decoder as one "
                           'onnxruntime graph: the fastest CPU path)').value
        self.int4_scheme = p('int4_scheme', 'rtn', 'rtn | awq (when quantizing at start)').value
        self.int4_group_size = p('int4_group_size', 128, 'INT4 group size (halved until it '
                                 'divides every layer); 0 = per channel').value
        self.int4_weights = p('int4_weights', '', 'backbone saved by OpenVLAPolicy.save_int4; '
                              "'' = quantize at start").value
        self.lora_weights = p('lora_weights', '', 'QLoRA adapters over int4_weights '
                              "(qail-ros train-vla; precision int4 or int4_ort); '' = none").value
        self.device = p('device', 'cpu', 'cpu | cuda: where the int4_ort decoder graph runs '
                        '(cuda: onnxruntime-gpu)').value
        self.vision_engine = p('vision_engine', '', 'engine of the vision towers + projector '
                               '(python -m qail_ros.openvla.vision_engine); '
                               "'' = the torch towers").value
        self.instruction = p('instruction', '',
                             'language instruction (the instruction topic replaces it)').value
        self.max_rate_hz = p('max_rate_hz', 0.0,
                             'most inferences per second; 0 = one per new frame').value
        self.num_threads = p('num_threads', 1, 'torch CPU threads (and the onnxruntime '
                             "decoder's threads for int4_ort)").value
        self.frame_id = p('frame_id', 'base_link', 'frame of cmd_twist').value
        self.control_period_s = p('control_period_s', 0.2, 'seconds one action step spans '
                                  '(cmd_twist = delta / period); 0.2 = Bridge V2 at 5 Hz').value
        self.log_period_s = p('log_period_s', 1.0, 'seconds between action log lines; 0 = '
                              'every action').value
        self._validate()
        self.policy = None
        self.inferences = 0
        self.last_action: np.ndarray | None = None
        self.timing_log = TimingLog(max(self.log_period_s, 0.0))
        self.worker = LatestFrameWorker(self.step, name='vla_policy',
                                        max_rate_hz=float(self.max_rate_hz),
                                        logger=self.get_logger())
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
        from qail_ros.openvla.policy import INT4_SCHEMES, PRECISIONS
        problems = []
        if self.precision not in PRECISIONS:
            problems.append(f'precision must be one of {list(PRECISIONS)}, not '
                            f'{self.precision!r}')
        elif self.precision == 'int4_ort':
            from qail_ros.quant.ort_int4 import ort_available
            if not ort_available():
                problems.append("precision 'int4_ort' needs onnxruntime and onnx, which are not "
                                "importable: pip install onnxruntime onnx, or set precision "
                                "'int4' (torch's int4 kernel)")
        if self.device not in ('cpu', 'cuda'):
            problems.append(f"device must be 'cpu' or 'cuda', not {self.device!r}")
        elif self.device == 'cuda' and self.precision != 'int4_ort':
            problems.append("device 'cuda' is for precision int4_ort (the onnxruntime decoder "
                            'graph on onnxruntime-gpu)')
        if self.int4_scheme not in INT4_SCHEMES:
            problems.append(f'int4_scheme must be one of {list(INT4_SCHEMES)}, not '
                            f'{self.int4_scheme!r}')
        if self.int4_group_size < 0:
            problems.append(f'int4_group_size must be 0 (per channel) or a positive group '
                            f'size, not {self.int4_group_size}')
        if not self.model_path:
            problems.append('model_path must name an OpenVLA checkpoint directory')
        if self.max_rate_hz < 0:
            problems.append(f'max_rate_hz must be >= 0, not {self.max_rate_hz}')
        if self.num_threads < 1:
            problems.append(f'num_threads must be >= 1, not {self.num_threads}')
        if self.control_period_s <= 0:
            problems.append(f'control_period_s must be > 0, not {self.control_period_s}')
        if self.log_period_s < 0:
            problems.append(f'log_period_s must be >= 0, not {self.log_period_s}')
        if problems:
            raise ParameterError(f"node '{self.get_name()}': " + '; '.join(problems))

    # -- lifecycle ------------------------------------------------------------------------------
    def on_configure(self) -> None:
        import torch
        from qail_ros.openvla import OpenVLAError
        from qail_ros.openvla.policy import OpenVLAPolicy
        torch.set_num_threads(int(self.num_threads))
        start = time.perf_counter()
        path = resolve_model_path(self.model_path)
        try:
            policy = OpenVLAPolicy.from_pretrained(
                path, precision=self.precision, unnorm_key=self.unnorm_key or None,
                int4_scheme=self.int4_scheme, int4_group_size=int(self.int4_group_size),
                int4_weights=self.int4_weights or None, ort_threads=int(self.num_threads),
                lora_weights=self.lora_weights or None, ort_device=self.device,
                vision_engine=self.vision_engine or None)
        except OpenVLAError as exc:
            raise ParameterError(f"node '{self.get_name()}': loading {path}: {exc}") from None
        policy.warmup(1, self.instruction)   # the first forward allocates: not on a frame
        self.policy = policy
        d = policy.describe()
        int4 = f", int4 {d['int4']}" if d['int4'] else ''
        self.get_logger().info(
            f'OpenVLA {path} ({d["parameters"] / 1e6:.2f} M params, {d["precision"]}{int4}, '
            f'unnorm_key {policy.unnorm_key!r}) ready in {time.perf_counter() - start:.2f} s; '
            f'instruction: {self.instruction!r}')

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
        """Run OpenVLA on one sensor_msgs/Image and publish every output; returns the action."""
        from qail_ros.image import to_numpy
        if self.policy is None:
            raise RuntimeError('vla_policy is not configured (on_configure loads the model)')
        start_s = time.time()
        t0 = time.perf_counter()
        frame = to_numpy(msg, desired='rgb8')
        t1 = time.perf_counter()
        result = self.policy.predict(frame, self.instruction)
        action = np.asarray(result.action, dtype=np.float64)
        outputs = self._outputs(msg, action)
        stamp_ns = messages.ns_from_time(msg.header.stamp)
        t3 = time.perf_counter()
        age_ms = (self.now_ns() - stamp_ns) / 1e6 if stamp_ns > 0 else float('nan')
        pre = (t1 - t0) * 1e3 + result.timing_ms['preprocess_ms']
        timing = policy_io.InferenceTiming(
            stamp_ns=stamp_ns, start_s=start_s, end_s=start_s + (t3 - t0), preprocess_ms=pre,
            inference_ms=result.timing_ms['inference_ms'],
            postprocess_ms=(t3 - t0) * 1e3 - pre - result.timing_ms['inference_ms'],
            age_ms=age_ms, dropped_frames=self.frames_dropped)
        for pub, out in zip((self.action_pub, self.twist_pub, self.gripper_pub), outputs):
            pub.publish(out)
        self.raw_pub.publish(policy_io.raw_outputs_to_msg(stamp_ns, result.bin_logits,
                                                          'action_token_logits'))
        self.timing_pub.publish(policy_io.timing_to_msg(timing))
        self.inferences += 1
        self.last_action = action
        self._log(action, timing)
        return action

    def _outputs(self, msg, action: np.ndarray) -> tuple:
        """(labelled action, TwistStamped, gripper) messages for one action."""
        a = [float(x) for x in action]
        rate = 1.0 / float(self.control_period_s)
        vec = 'geometry_msgs/msg/Vector3'
        twist = messages.new(
            'geometry_msgs/msg/TwistStamped',
            header=messages.new('std_msgs/msg/Header', stamp=msg.header.stamp,
                                frame_id=self.frame_id),
            twist=messages.new(
                'geometry_msgs/msg/Twist',
                linear=messages.new(vec, x=a[0] * rate, y=a[1] * rate, z=a[2] * rate),
                angular=messages.new(vec, x=a[3] * rate, y=a[4] * rate, z=a[5] * rate)))
        labels = ACTION_LABELS if len(a) == len(ACTION_LABELS) else \
            tuple(f'a{i}' for i in range(len(a)))
        return (policy_io.labelled_values(labels, action), twist,
                messages.new('std_msgs/msg/Float32', data=min(max(a[-1], 0.0), 1.0)))

    def _log(self, action: np.ndarray, timing: policy_io.InferenceTiming) -> None:
        line = self.timing_log.add(timing)
        if line:
            values = ' '.join(f'{k}={v:+.4f}' for k, v in zip(ACTION_LABELS, action))
            self.get_logger().info(f'action {values} | {line} | frames '
                                   f'{self.frames_received}, dropped {self.frames_dropped}')


def main(args=None) -> int:
    return run_node(VLAPolicy, args)


if __name__ == '__main__':
    sys.exit(main())
