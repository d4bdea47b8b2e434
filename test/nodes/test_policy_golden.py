"""The four policy nodes give the same outputs as the code before the policy-node base
(issue 14 item 2): image_policy, vla_policy (fp32 and int4), cilrs_policy and state_policy run
on fixed inputs through their topics, and every published number is compared with
test/nodes/data/policy_golden.npz, recorded from the nodes as they were before the refactor.

Regenerate (only when a change of the actions is intended, and say so in the commit):
    python test/nodes/test_policy_golden.py
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parent / 'data' / 'policy_golden.npz'
TINY = ROOT / 'models' / 'openvla-tiny'
CILRS = ROOT / 'models' / 'cilrs-highway' / 'cilrs_highway_w8a8_ort.onnx'
STAMP0 = 1_700_000_000_000_000_000


def _has(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


def _frames(h: int, w: int, n: int = 3):
    from qail_ros.image import from_numpy
    out = []
    for i in range(n):
        pixels = np.random.default_rng(100 + i).integers(0, 256, (h, w, 3), dtype=np.uint8)
        out.append(from_numpy(pixels, 'rgb8', stamp=STAMP0 + i * 1_000_000,
                              frame_id='camera'))
    return out


def _run(rt, policy, publish, inputs, subs: dict[str, tuple[str, str]]) -> dict[str, list]:
    """Publish each input, wait for its answer on every topic of `subs`; the answers (those
    stamped like an input) in order."""
    from qail_ros import messages, policy_io
    from qail_ros.runtime import Node
    harness = Node('golden_harness')
    got: dict[str, list] = {k: [] for k in subs}
    for key, (mtype, topic) in subs.items():
        harness.create_subscription(mtype, topic, got[key].append, 100)
    pub = harness.create_publisher(*publish, 10)

    def stamp_of(msg) -> int | None:
        if hasattr(msg, 'header'):
            return messages.ns_from_time(msg.header.stamp)
        if msg.__msgtype__ == 'std_msgs/msg/Float64MultiArray' and msg.layout.data_offset == 2:
            return policy_io.raw_outputs_from_msg(msg)[0]
        return None

    answers: dict[str, list] = {k: [] for k in subs}
    policy.on_activate()
    try:
        for item in inputs:
            for lst in got.values():
                lst.clear()
            pub.publish(item)
            # an answer per stamped topic with the input's stamp; unstamped topics: one message
            want = stamp_of(item)

            def answered():
                for key, lst in got.items():
                    stamps = [stamp_of(m) for m in lst]
                    if want is not None and any(s is not None for s in stamps):
                        if want not in stamps:
                            return False
                    elif not lst:
                        return False
                return True
            assert rt.spin_until(answered, 60.0), {k: len(v) for k, v in got.items()}
            rt.spin_until(lambda: False, 0.05)
            for key, lst in got.items():
                stamps = [stamp_of(m) for m in lst]
                if want is not None and want in stamps:
                    answers[key].append(lst[stamps.index(want)])
                else:   # unstamped (action arrays, gripper): the last one of this round
                    answers[key].append(lst[-1])
    finally:
        policy.on_deactivate()
        policy.on_cleanup()
        harness.destroy_node()
    return answers


def _vec(msg) -> np.ndarray:
    t = msg.__msgtype__
    if t == 'geometry_msgs/msg/TwistStamped':
        lin, ang = msg.twist.linear, msg.twist.angular
        return np.array([lin.x, lin.y, lin.z, ang.x, ang.y, ang.z], np.float64)
    if t == 'std_msgs/msg/Float32':
        return np.array([msg.data], np.float64)
    if t == 'carla_msgs/msg/CarlaEgoVehicleControl':
        return np.array([msg.throttle, msg.steer, msg.brake], np.float64)
    return np.asarray(msg.data, np.float64)


def _image_subs(node: str) -> dict[str, tuple[str, str]]:
    return {'action': ('std_msgs/msg/Float32MultiArray', '/action'),
            'twist': ('geometry_msgs/msg/TwistStamped', '/cmd_twist'),
            'gripper': ('std_msgs/msg/Float32', '/gripper'),
            'raw': ('std_msgs/msg/Float64MultiArray', f'/{node}/raw_outputs')}


def collect_image_policy(rt) -> dict[str, np.ndarray]:
    from qail_ros.nodes.image_policy import ImagePolicy
    node = ImagePolicy(cli_args=['--ros-args', '-p', 'log_period_s:=0.0', '-p', 'image_size:=64',
                                 '-p', 'instruction:=pick up the red block'])
    node.on_configure()
    got = _run(rt, node, ('sensor_msgs/msg/Image', '/image_raw'), _frames(48, 64),
               _image_subs('image_policy'))
    return {f'image_policy/{k}': np.stack([_vec(m) for m in v]) for k, v in got.items()}


def collect_vla_policy(rt, precision: str) -> dict[str, np.ndarray]:
    from qail_ros.nodes.vla_policy import VLAPolicy
    node = VLAPolicy(cli_args=['--ros-args', '-p', 'log_period_s:=0.0', '-p',
                               f'model_path:={TINY}', '-p', f'precision:={precision}',
                               '-p', 'instruction:=open the drawer'])
    node.on_configure()
    got = _run(rt, node, ('sensor_msgs/msg/Image', '/image_raw'), _frames(48, 64),
               _image_subs('vla_policy'))
    return {f'vla_policy_{precision}/{k}': np.stack([_vec(m) for m in v])
            for k, v in got.items()}


def collect_cilrs_policy(rt) -> dict[str, np.ndarray]:
    from qail_ros import messages
    from qail_ros.msg_defs import register_carla_msgs
    from qail_ros.nodes.cilrs_policy import CILRSPolicy
    from qail_ros.runtime import Node
    register_carla_msgs()
    node = CILRSPolicy(cli_args=['--ros-args', '-p', f'engine:={CILRS}',
                                 '-p', 'log_period_s:=0.0'])
    node.on_configure()
    side = Node('golden_side')
    speed = side.create_publisher('std_msgs/msg/Float32', '/carla/ego_vehicle/speedometer', 10)
    command = side.create_publisher('std_msgs/msg/Int8', '/carla/ego_vehicle/navigation_command',
                                    10)
    speed.publish(messages.new('std_msgs/msg/Float32', data=7.5))
    command.publish(messages.new('std_msgs/msg/Int8', data=1))
    assert rt.spin_until(lambda: node.speed_mps == 7.5 and node.command == 1, 5.0)
    got = _run(rt, node, ('sensor_msgs/msg/Image', '/carla/ego_vehicle/rgb_front/image'),
               _frames(72, 160),
               {'control': ('carla_msgs/msg/CarlaEgoVehicleControl',
                            '/carla/ego_vehicle/vehicle_control_cmd'),
                'raw': ('std_msgs/msg/Float64MultiArray', '/cilrs_policy/raw_outputs')})
    side.destroy_node()
    return {f'cilrs_policy/{k}': np.stack([_vec(m) for m in v]) for k, v in got.items()}


def collect_state_policy(rt, engine: Path) -> dict[str, np.ndarray]:
    from qail_ros import policy_io
    from qail_ros.nodes.state_policy import StatePolicy
    node = StatePolicy(cli_args=['--ros-args', '-p', f'engine:={engine}'])
    node.on_configure()
    rng = np.random.default_rng(7)
    states = [policy_io.raw_outputs_to_msg(STAMP0 + i, rng.normal(size=5), 'state')
              for i in range(3)]
    got = _run(rt, node, ('std_msgs/msg/Float64MultiArray', '/state'), states,
               {'action': ('std_msgs/msg/Float64MultiArray', '/action'),
                'raw': ('std_msgs/msg/Float64MultiArray', '/state_policy/raw_outputs')})
    return {f'state_policy/{k}': np.stack([_vec(m) for m in v]) for k, v in got.items()}


def _state_engine(tmp: Path) -> Path:
    from qail_ros.physics.export import export_policy
    from qail_ros.physics.models import task_dir
    engine, _ = export_policy(task_dir('cartpole-balance') / 'fp_policy.safetensors', tmp,
                              name='fp32')
    return Path(engine)


def _compare(got: dict[str, np.ndarray], prefix: str) -> None:
    golden = np.load(GOLDEN)
    keys = sorted(k for k in golden.files if k.startswith(prefix + '/'))
    assert keys, f'no golden outputs for {prefix} in {GOLDEN}'
    assert sorted(got) == keys
    for key in keys:
        np.testing.assert_allclose(got[key], golden[key], rtol=1e-5, atol=1e-6, err_msg=key)


needs_torch = pytest.mark.skipif(not _has('torch'), reason='the policies run torch')


@needs_torch
def test_image_policy_outputs_are_unchanged(rt):
    _compare(collect_image_policy(rt), 'image_policy')


@needs_torch
@pytest.mark.skipif(not _has('transformers'), reason='the OpenVLA backbone needs transformers')
@pytest.mark.parametrize('precision', ['fp32', 'int4'])
def test_vla_policy_outputs_are_unchanged(rt, monkeypatch, precision):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    _compare(collect_vla_policy(rt, precision), f'vla_policy_{precision}')


@pytest.mark.skipif(not _has('onnxruntime'), reason='the shipped CILRS engine is onnxruntime')
def test_cilrs_policy_outputs_are_unchanged(rt):
    _compare(collect_cilrs_policy(rt), 'cilrs_policy')


@needs_torch
@pytest.mark.skipif(not _has('dm_control'), reason='exporting the MLP engine needs dm-control')
def test_state_policy_outputs_are_unchanged(rt, tmp_path):
    _compare(collect_state_policy(rt, _state_engine(tmp_path)), 'state_policy')


def _record() -> None:  # pragma: no cover - regenerates the golden file
    import tempfile

    from qail_ros.runtime import set_runtime
    from qail_ros.runtime.embedded import EmbeddedRuntime
    os.environ['QAIL_ROS_TRANSPORT'] = 'none'
    os.environ['HF_HUB_OFFLINE'] = '1'
    out: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for collect in (collect_image_policy, lambda rt: collect_vla_policy(rt, 'fp32'),
                        lambda rt: collect_vla_policy(rt, 'int4'), collect_cilrs_policy,
                        lambda rt: collect_state_policy(rt, _state_engine(Path(tmp)))):
            rt = EmbeddedRuntime(transport='none')
            set_runtime(rt)
            rt.init([])
            try:
                out.update(collect(rt))
            finally:
                rt.shutdown()
                set_runtime(None)
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(GOLDEN, **out)
    print(f'wrote {GOLDEN}: ' + ', '.join(f'{k} {v.shape}' for k, v in sorted(out.items())))


if __name__ == '__main__':
    sys.path.insert(0, str(ROOT))
    _record()
