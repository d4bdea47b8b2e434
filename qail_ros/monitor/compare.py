"""Measure the same policy at several precisions through the monitor, on this machine.

`run_image_policy_sessions(['fp32', 'int8-dynamic'], out_dir)` runs, for each variant and in one
process on the embedded runtime: a camera harness publishing frames at `rate_hz`, the
image_policy node (qail_ros.nodes.image_policy, ConvActionRegressor) with its network replaced
by the variant, and the power_monitor node recording a session from the policy's
`~/policy_timing` messages and whatever power source this machine has. The sessions feed
`qail_ros.monitor.report.write_report`.

Variants (what this CPU-only machine can run; the real comparison is FP32 vs W8A8 vs W4A4
engines on a Jetson):
  fp32          the network as is
  int8-dynamic  torch.ao dynamic quantization: nn.Linear weights int8, activations quantized
                per batch at run time; the convolutions stay FP32 (dynamic quantization has no
                conv kernels), so only the FiLM/MLP head changes
  bf16          weights and activations in bfloat16 (the whole network)
"""
from __future__ import annotations

import os
import time

import numpy as np

from qail_ros.errors import QailRosError

__all__ = ['VARIANTS', 'make_variant', 'run_image_policy_sessions']

VARIANTS = ('fp32', 'int8-dynamic', 'bf16')


class _Bf16Policy:
    """ConvActionRegressor in bfloat16 behind the same predict_with_raw()."""

    def __init__(self, policy):
        import torch
        self.policy = policy.to(torch.bfloat16)
        self.config = policy.config

    def predict_with_raw(self, frame, instruction: str = ''):
        import torch
        p = self.policy
        with torch.inference_mode():
            emb = p.embed_instruction(instruction) if p.film is not None else None
            x = p.preprocess(frame).to(torch.bfloat16)
            raw = p.head_outputs(x, None if emb is None else emb.to(torch.bfloat16))[0].float()
            return (torch.tanh(raw).numpy().astype(np.float32), raw.numpy().astype(np.float32))

    def predict(self, frame, instruction: str = ''):
        return self.predict_with_raw(frame, instruction)[0]


def make_variant(policy, variant: str):
    """The policy at `variant` precision (see the module docstring)."""
    import copy

    import torch
    if variant == 'fp32':
        return policy
    if variant == 'int8-dynamic':
        from torch.ao.quantization import quantize_dynamic
        return quantize_dynamic(copy.deepcopy(policy), {torch.nn.Linear}, dtype=torch.qint8)
    if variant == 'bf16':
        return _Bf16Policy(copy.deepcopy(policy))
    raise QailRosError(f"unknown variant {variant!r}: choose from {', '.join(VARIANTS)}")


def run_image_policy_sessions(variants: list[str], out_dir: str, rate_hz: float = 15.0,
                              duration_s: float = 20.0, interval_ms: int = 100,
                              num_threads: int = 1):
    """Run each variant, record a session under out_dir/sessions/, return (sessions, notes)."""
    import torch

    from qail_ros.image import from_numpy
    from qail_ros.monitor.report import load_session
    from qail_ros.nodes.image_policy import ImagePolicy
    from qail_ros.nodes.power_monitor import PowerMonitor
    from qail_ros.runtime import Node, set_runtime
    from qail_ros.runtime.embedded import EmbeddedRuntime

    for v in variants:
        if v not in VARIANTS:
            raise QailRosError(f"unknown variant {v!r}: choose from {', '.join(VARIANTS)}")
    torch.set_num_threads(num_threads)
    sessions, notes = [], []
    for variant in variants:
        path = os.path.join(out_dir, 'sessions', f'{variant}.jsonl')
        rt = EmbeddedRuntime(transport='none')  # in-process only
        set_runtime(rt)
        rt.init([])
        try:
            policy = ImagePolicy(cli_args=['--ros-args', '-p', 'log_period_s:=10.0',
                                           '-p', f'num_threads:={num_threads}'])
            policy.on_configure()
            policy.policy = make_variant(policy.policy, variant)
            # warm-up of the variant outside the measurement
            frame = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
            for _ in range(3):
                policy.policy.predict_with_raw(frame, '')
            monitor = PowerMonitor(cli_args=[
                '--ros-args', '-p', f'interval_ms:={interval_ms}', '-p',
                f'record_path:={path}', '-p', f'session_label:={variant}', '-p',
                'timing_topics:=[/image_policy/policy_timing]'])
            monitor.on_configure()
            camera = Node('camera_harness')
            pub = camera.create_publisher('sensor_msgs/msg/Image', '/image_raw', 10)
            rng = np.random.default_rng(1)
            frames = [rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(8)]
            count = [0]

            def publish_frame():
                count[0] += 1
                pub.publish(from_numpy(frames[count[0] % len(frames)], 'rgb8',
                                       stamp=time.time_ns(), frame_id='camera'))
            camera.create_timer(1.0 / rate_hz, publish_frame)
            monitor.on_activate()
            policy.on_activate()
            rt.spin([camera, policy, monitor], duration_s=duration_s)
            policy.on_deactivate()
            monitor.on_deactivate()
            monitor.on_cleanup()
            notes_src = monitor.source.describe()
            for node in (camera, policy, monitor):
                node.destroy_node()
        finally:
            rt.shutdown()
            set_runtime(None)
        sessions.append(load_session(path, variant))
        notes.append(f'{variant}: {count[0]} frames at {rate_hz:g} Hz over {duration_s:g} s; '
                     f'power source: {notes_src}')
    load1, _, _ = os.getloadavg()
    notes.append(f'machine load: 1-minute load average {load1:.1f} on {os.cpu_count()} CPUs '
                 'when the runs ended (shared machine: latency includes contention)')
    notes.insert(0, 'image_policy (ConvActionRegressor, untrained, 224x224 input, '
                 f'{num_threads} torch thread(s)) in-process on the embedded runtime; timing '
                 'from its ~/policy_timing messages (qail_ros.policy_io) through power_monitor')
    return sessions, notes
