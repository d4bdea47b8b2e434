"""vla_policy: camera frames + a language instruction -> OpenVLA 7-DoF end-effector action.

Runs an OpenVLA checkpoint (qail_ros.openvla: our own architecture code, no remote code, no
timm) loaded in on_configure through the engine registry (qail_ros.engines.load_engine) from
`model_path` (a Hugging Face OpenVLA directory: the shipped
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

Fail-safe (qail_ros.nodes.policy_base): on an invalid frame, an inference error, no valid
frame for `input_timeout_s` (default 0.6 s, three control periods), while loading and at
shutdown it publishes the safe command: a zero cmd_twist and (once a gripper value was
commanded) the action with zero deltas and the gripper held (`safe_gripper`: hold | open |
close), stamp 0. /diagnostics at 1 Hz. An instruction longer than max_instruction_bytes or
max_instruction_tokens (or than the model's context) is refused; the previous one stays.

Parameters: `VLAPolicy.PARAMETERS` below (model_path, unnorm_key, precision, int4_*, lora_weights,
device, vision_engine and num_threads are read-only: a change needs a reload) and the common
ones of PolicyNode; the descriptions are in the specs (`ros2 param describe`).
"""
from __future__ import annotations

import copy
import sys
import time

import numpy as np

from qail_ros.errors import ParameterError
from qail_ros.nodes.policy_base import ArmPolicyNode, PolicyOutputs
from qail_ros.policies.instruction import ACTION_LABELS
from qail_ros.runtime import run_node
from qail_ros.runtime.params import ParameterSpec
from qail_ros.share import resolve_share_path

__all__ = ['VLAPolicy', 'main', 'DEFAULT_MODEL']

DEFAULT_MODEL = 'models/openvla-tiny'


def _precisions() -> tuple[str, ...]:
    from qail_ros.openvla.policy import PRECISIONS
    return tuple(PRECISIONS)


def _schemes() -> tuple[str, ...]:
    from qail_ros.openvla.policy import INT4_SCHEMES
    return tuple(INT4_SCHEMES)


class VLAPolicy(ArmPolicyNode):
    """Runs OpenVLA on the newest camera frame; see the module docstring."""

    NODE_NAME = 'vla_policy'
    INPUT_TIMEOUT_S = 0.6
    #: safe_gripper -> the gripper value of the action (0 closed, 1 open)
    SAFE_GRIPPER = {'open': 1.0, 'close': 0.0}

    def __init__(self, **kwargs):
        self.PARAMETERS = (
            ParameterSpec('model_path', DEFAULT_MODEL, 'OpenVLA checkpoint directory (HF '
                          'layout); relative paths also look in the package share dir',
                          read_only=True),
            ParameterSpec('unnorm_key', 'bridge_orig', 'data set whose action statistics '
                          "un-normalise the actions ('' = the checkpoint's only one)",
                          read_only=True),
            ParameterSpec('precision', 'fp32', 'fp32 | bf16 | int4 (INT4 weight-only Llama '
                          "backbone, torch's kernel) | int4_ort (same codes, the decoder as "
                          'one onnxruntime graph: the fastest CPU path)',
                          choices=_precisions(), read_only=True),
            ParameterSpec('int4_scheme', 'rtn', 'rtn | awq (when quantizing at start)',
                          choices=_schemes(), read_only=True),
            ParameterSpec('int4_group_size', 128, 'INT4 group size (halved until it divides '
                          'every layer); 0 = per channel', min=0, read_only=True,
                          allowed='0 (per channel) or a positive group size'),
            ParameterSpec('int4_weights', '', 'backbone saved by OpenVLAPolicy.save_int4; '
                          "'' = quantize at start", read_only=True),
            ParameterSpec('lora_weights', '', 'QLoRA adapters over int4_weights (qail-ros '
                          "train-vla; precision int4 or int4_ort); '' = none", read_only=True),
            ParameterSpec('device', 'cpu', 'cpu | cuda: where the int4_ort decoder graph runs '
                          '(cuda: onnxruntime-gpu)', choices=('cpu', 'cuda'), read_only=True,
                          allowed="'cpu' or 'cuda'"),
            ParameterSpec('vision_engine', '', 'engine of the vision towers + projector '
                          "(qail-ros export MODEL --backend onnxruntime); '' = the torch towers",
                          read_only=True),
            ParameterSpec('num_threads', 1, "torch CPU threads (and the onnxruntime decoder's "
                          'threads for int4_ort)', min=1, read_only=True),
            ParameterSpec('frame_id', 'base_link', 'frame of cmd_twist'),
            ParameterSpec('control_period_s', 0.2, 'seconds one action step spans (cmd_twist '
                          '= delta / period); 0.2 = Bridge V2 at 5 Hz', min=0.0,
                          min_exclusive=True),
            ArmPolicyNode.safe_gripper_spec(),
        )
        super().__init__(**kwargs)

    def check_parameters(self) -> None:
        problems = []
        if self.precision == 'int4_ort':
            from qail_ros.quant.ort_int4 import ort_available
            if not ort_available():
                problems.append("precision 'int4_ort' needs onnxruntime and onnx, which are "
                                "not importable: pip install onnxruntime onnx, or set "
                                "precision 'int4' (torch's int4 kernel)")
        if self.device == 'cuda' and self.precision != 'int4_ort':
            problems.append("device 'cuda' is for precision int4_ort (the onnxruntime decoder "
                            'graph on onnxruntime-gpu)')
        if not self.model_path:
            problems.append('model_path must name an OpenVLA checkpoint directory')
        if problems:
            raise ParameterError(f"node '{self.get_name()}': " + '; '.join(problems))

    # -- engine ---------------------------------------------------------------------------------
    def load(self) -> None:
        import torch
        from qail_ros.engines import EngineError, load_engine
        torch.set_num_threads(int(self.num_threads))
        start = time.perf_counter()
        path = resolve_share_path(self.model_path)
        try:
            engine = load_engine(
                path, architecture='openvla', precision=self.precision,
                threads=int(self.num_threads), device=self.device,
                options={'unnorm_key': self.unnorm_key or None, 'int4_scheme': self.int4_scheme,
                         'int4_group_size': int(self.int4_group_size),
                         'int4_weights': self.int4_weights or None,
                         'lora_weights': self.lora_weights or None,
                         'vision_engine': self.vision_engine or None})
        except EngineError as exc:
            raise ParameterError(f"node '{self.get_name()}': loading {path}: {exc}") from None
        policy = engine.policy
        self._token_budget(policy)
        problem = self.instruction_problem(self.instruction, policy=policy)
        if problem:
            raise ParameterError(f"node '{self.get_name()}': instruction: {problem}")
        engine.warmup(1, self.instruction)   # the first forward allocates: not on a frame
        self.engine, self.policy = engine, policy
        d = policy.describe()
        int4 = f", int4 {d['int4']}" if d['int4'] else ''
        self.get_logger().info(
            f'OpenVLA {path} ({d["parameters"] / 1e6:.2f} M params, {d["precision"]}{int4}, '
            f'unnorm_key {policy.unnorm_key!r}) ready in {time.perf_counter() - start:.2f} s; '
            f'instruction: {self.instruction!r}')

    def _token_budget(self, policy) -> None:
        """Prompt tokens the model's context leaves (positions - image patches - actions),
        and the template's own tokens (an empty instruction)."""
        c = policy.config
        positions = int(c.text_config.get('max_position_embeddings') or 0)
        self._context_tokens = (positions - c.num_patches - policy.action_dim
                                if positions else None)
        # a copy to count instruction tokens with on the executor thread while the worker
        # thread's predict uses the policy's own (a tokenizer is not made for two threads)
        try:
            self._tokenizer = copy.deepcopy(policy.tokenizer)
        except Exception:  # noqa: BLE001 - a tokenizer that does not copy: share it
            self._tokenizer = policy.tokenizer
        self._template_tokens = len(self._tokenizer(policy.prompt(''))['input_ids'])

    def instruction_problem(self, text: str, tokens: bool = True, policy=None):
        problem = super().instruction_problem(text, tokens=tokens)
        policy = policy or self.policy
        if problem or not tokens or policy is None:
            return problem
        n = len(self._tokenizer(policy.prompt(text))['input_ids'])
        limit = int(self.max_instruction_tokens)
        if n - self._template_tokens > limit:
            return (f'an instruction of {n - self._template_tokens} tokens is over '
                    f'max_instruction_tokens ({limit})')
        if self._context_tokens is not None and n + 1 > self._context_tokens:
            return (f"a prompt of {n + 1} tokens is over what the model's context leaves "
                    f'({self._context_tokens} = max_position_embeddings - image patches - '
                    'action tokens)')
        return None

    def gripper_value(self, a6: float) -> float:
        return min(max(a6, 0.0), 1.0)

    # -- inference ------------------------------------------------------------------------------
    def run(self, frame):
        return self.engine.infer({'image': frame, 'instruction': self.instruction})

    def to_outputs(self, msg, result) -> PolicyOutputs:
        action = np.asarray(result['action'], dtype=np.float64)
        a = [float(x) for x in action]
        rate = 1.0 / float(self.control_period_s)
        values = ' '.join(f'{k}={v:+.4f}' for k, v in zip(ACTION_LABELS, action))
        return PolicyOutputs(
            messages=self.arm_messages(action, [a[0] * rate, a[1] * rate, a[2] * rate],
                                       [a[3] * rate, a[4] * rate, a[5] * rate],
                                       msg.header.stamp),
            raw=result['bin_logits'], raw_name='action_token_logits', value=action,
            log=f'action {values}',
            run_split_ms=(float(result['timing_ms'][0]), float(result['timing_ms'][1])))


def main(args=None) -> int:
    return run_node(VLAPolicy, args)


if __name__ == '__main__':
    sys.exit(main())
