"""vla_policy on the embedded runtime, in one process: camera + instruction in -> twist /
gripper / action / raw logits / timing out with the input stamp, on the shipped tiny OpenVLA."""
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip('torch', reason='vla_policy runs a torch model')
pytest.importorskip('transformers', reason='the OpenVLA backbone needs transformers')

from qail_ros import messages, policy_io  # noqa: E402
from qail_ros.errors import ParameterError  # noqa: E402
from qail_ros.image import from_numpy  # noqa: E402
from qail_ros.nodes.vla_policy import ACTION_LABELS, VLAPolicy  # noqa: E402
from qail_ros.runtime import Node  # noqa: E402
from qail_ros.runtime.node import check_node_parameters  # noqa: E402
from qail_ros.share import config_path  # noqa: E402

TINY = Path(__file__).resolve().parents[2] / 'models' / 'openvla-tiny'


@pytest.fixture
def rt(runtime, monkeypatch):
    """The shared in-process runtime (test/conftest.py), with the hub offline."""
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    return runtime


class Harness(Node):
    """Publishes camera frames and instructions, records everything vla_policy sends."""

    def __init__(self, **kwargs):
        super().__init__('harness', **kwargs)
        self.image_pub = self.create_publisher('sensor_msgs/msg/Image', 'image_raw', 10)
        self.instruction_pub = self.create_publisher('std_msgs/msg/String', 'instruction', 10)
        self.got: dict[str, list] = {
            k: [] for k in ('action', 'twist', 'gripper', 'timing', 'raw')}
        for key, mtype, topic in (
                ('action', 'std_msgs/msg/Float32MultiArray', 'action'),
                ('twist', 'geometry_msgs/msg/TwistStamped', 'cmd_twist'),
                ('gripper', 'std_msgs/msg/Float32', 'gripper'),
                ('timing', 'std_msgs/msg/Float64MultiArray', '/vla_policy/policy_timing'),
                ('raw', 'std_msgs/msg/Float64MultiArray', '/vla_policy/raw_outputs')):
            self.create_subscription(mtype, topic, self.got[key].append, 10)

    def frame(self, seed: int, stamp_ns: int):
        pixels = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
        return from_numpy(pixels, 'rgb8', stamp=stamp_ns, frame_id='camera')


def make_policy(*params: str) -> VLAPolicy:
    # the normal path; the fail-safe (watchdog, loading) is tested in test_policy_failsafe.py
    args = ['--ros-args', '-p', 'log_period_s:=0.0', '-p', f'model_path:={TINY}',
            '-p', 'input_timeout_s:=3600.0',
            '-p', 'unnorm_key:=bridge_orig']
    for p in params:
        args += ['-p', p]
    node = VLAPolicy(cli_args=args)
    node.on_configure()
    return node


def test_camera_and_instruction_in_actions_out_with_the_stamp(rt):
    harness = Harness()
    policy = make_policy('instruction:=pick up the red block', 'frame_id:=tool0',
                         'control_period_s:=0.5')
    policy.on_activate()
    try:
        harness.instruction_pub.publish(messages.new('std_msgs/msg/String',
                                                     data='open the drawer'))
        assert rt.spin_until(lambda: policy.instruction == 'open the drawer', 5.0)
        stamp = 1_700_000_000_123_456_789
        harness.image_pub.publish(harness.frame(0, stamp))
        assert rt.spin_until(lambda: all(harness.got.values()), 30.0), harness.got
    finally:
        policy.on_deactivate()
    # the same answer as the library on the same frame and instruction
    frame = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    expected = policy.policy.predict(frame, 'open the drawer')
    action = harness.got['action'][0]
    assert action.layout.dim[0].label == ','.join(ACTION_LABELS)
    a = np.asarray(action.data, dtype=np.float64)
    np.testing.assert_allclose(a, expected.action, rtol=1e-6, atol=1e-7)
    twist = harness.got['twist'][0]
    assert messages.ns_from_time(twist.header.stamp) == stamp
    assert twist.header.frame_id == 'tool0'
    assert twist.twist.linear.x == pytest.approx(expected.action[0] / 0.5)
    assert twist.twist.angular.z == pytest.approx(expected.action[5] / 0.5)
    assert harness.got['gripper'][0].data == pytest.approx(
        min(max(expected.action[6], 0.0), 1.0), abs=1e-6)
    stamp_raw, raw = policy_io.raw_outputs_from_msg(harness.got['raw'][0])
    assert stamp_raw == stamp and raw.shape == (7, 256)
    assert harness.got['raw'][0].layout.dim[0].label == 'action_token_logits'
    np.testing.assert_allclose(raw, expected.bin_logits, rtol=1e-5, atol=1e-6)
    timing = policy_io.timing_from_msg(harness.got['timing'][0])
    assert timing.stamp_ns == stamp and timing.inference_ms > 0
    assert timing.latency_ms >= timing.inference_ms


def test_latest_frame_policy_counts_drops(rt):
    harness = Harness()
    policy = make_policy()
    real_predict = policy.policy.predict
    release, started = threading.Event(), threading.Event()

    def slow_predict(frame, instruction):
        started.set()
        release.wait(10)
        return real_predict(frame, instruction)

    policy.policy.predict = slow_predict
    policy.on_activate()
    try:
        harness.image_pub.publish(harness.frame(0, 1_000))
        assert rt.spin_until(started.is_set, 10.0)
        for i in range(1, 6):
            harness.image_pub.publish(harness.frame(i, 1_000 + i))
            t = time.perf_counter()
            rt.spin_once(timeout_s=1.0)
            assert time.perf_counter() - t < 0.5      # the camera callback never waits
        release.set()
        assert rt.spin_until(lambda: len(harness.got['twist']) >= 2, 20.0)
    finally:
        release.set()
        policy.on_deactivate()
    stamps = [messages.ns_from_time(t.header.stamp) for t in harness.got['twist']]
    assert stamps == [1_000, 1_005]
    assert policy.frames_dropped == 4
    assert policy_io.timing_from_msg(harness.got['timing'][-1]).dropped_frames == 4


def rgb(seed: int) -> np.ndarray:
    """The pixels of Harness.frame(seed, ...)."""
    return np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)


def check_action_from_tokens(result, policy) -> None:
    """The action is OpenVLA's decoding of the greedy tokens, recomputed here from the
    checkpoint's config.json: token -> bin centre of 256 uniform bins over [-1, 1] ->
    0.5 (a + 1) (q99 - q01) + q01 where the mask is set (the gripper stays in [-1, 1]); each
    action token is the top one among the bin logits."""
    import json
    stats = json.loads((TINY / 'config.json').read_text())['norm_stats']['bridge_orig']['action']
    q01, q99 = np.array(stats['q01']), np.array(stats['q99'])
    mask = np.array(stats['mask'])
    vocab = policy.action_tokenizer.vocab_size
    bins = np.linspace(-1.0, 1.0, 256)
    centres = (bins[:-1] + bins[1:]) / 2
    k = np.clip(vocab - result.tokens - 1, 0, 254)
    np.testing.assert_allclose(result.normalized, centres[k], rtol=0, atol=1e-12)
    want = np.where(mask, 0.5 * (centres[k] + 1) * (q99 - q01) + q01, centres[k])
    np.testing.assert_allclose(result.action, want, rtol=1e-12, atol=1e-12)
    assert np.all(result.action[mask] >= q01[mask]) and np.all(result.action[mask] <= q99[mask])
    assert np.all(np.abs(result.action[~mask]) <= 1.0)
    is_action = (result.tokens >= vocab - 256) & (result.tokens < vocab)
    top_bin = np.argmax(result.bin_logits, axis=1)
    np.testing.assert_array_equal(top_bin[is_action], (vocab - 1 - result.tokens)[is_action])


def test_int4_precision_runs_on_int4_kernels(rt):
    """precision int4: the decoder's linear layers become torch int4-kernel layers (lm_head
    and the towers stay float), the node's action is the library's, decoded from the greedy
    tokens, and the INT4 logits follow the FP32 model's."""
    from qail_ros.quant.integer import Int4WeightOnlyLinear
    policy = make_policy('precision:=int4', 'instruction:=stack the cups')
    p = policy.policy
    assert p.precision == 'int4' and p.int4_state == 'kernel'
    lm = p.model.language_model
    int4 = [n for n, m in lm.named_modules() if isinstance(m, Int4WeightOnlyLinear)]
    layers = lm.config.num_hidden_layers
    assert len(int4) == 7 * layers and not any('lm_head' in n for n in int4)
    assert not any(isinstance(m, Int4WeightOnlyLinear) for m in p.model.vision_backbone.modules())
    action = policy.step(Harness().frame(1, 7))
    result = p.predict(rgb(1), 'stack the cups')
    np.testing.assert_array_equal(action, result.action)
    check_action_from_tokens(result, p)
    fp32 = make_policy('instruction:=stack the cups').policy.predict(rgb(1), 'stack the cups')
    assert not np.array_equal(result.bin_logits, fp32.bin_logits)   # really another model
    # the first action token sees the same context in both (later ones follow each model's
    # own earlier tokens): its bin logits are the FP32 ones up to 4-bit weight noise
    corr = np.corrcoef(result.bin_logits[0], fp32.bin_logits[0])[0, 1]
    assert corr > 0.95, corr


def test_int4_ort_precision_runs_on_onnxruntime(rt):
    """precision int4_ort from the parameters: the decoder as one onnxruntime graph
    (MatMulNBits) with num_threads threads, AWQ from int4_scheme, the node's action = the
    library's."""
    ort_int4 = pytest.importorskip('qail_ros.quant.ort_int4')
    if not ort_int4.ort_available():
        pytest.skip('onnxruntime / onnx not installed')
    policy = make_policy('precision:=int4_ort', 'int4_scheme:=awq', 'num_threads:=1',
                         'int4_group_size:=0', 'instruction:=stack the cups')
    p = policy.policy
    assert p.precision == 'int4_ort' and p.int4_state == 'ort'
    assert p.int4_details['scheme'] == 'awq' and p.int4_details['threads'] == 1
    assert p.int4_details['group_size'] == 0            # per channel
    from qail_ros.quant.ort_llama import OrtLlamaDecoder
    assert isinstance(p.model.decoder, OrtLlamaDecoder) and p.model.decoder.threads == 1
    harness = Harness()
    action = policy.step(harness.frame(1, 7))
    frame = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    np.testing.assert_array_equal(action, p.predict(frame, 'stack the cups').action)


def test_int4_ort_without_onnxruntime_is_a_parameter_error(rt, monkeypatch):
    ort_int4 = pytest.importorskip('qail_ros.quant.ort_int4')
    monkeypatch.setattr(ort_int4, 'ort_available', lambda: False)
    with pytest.raises(ParameterError, match=r"int4_ort' needs onnxruntime.*pip install"):
        VLAPolicy(cli_args=['--ros-args', '-p', 'precision:=int4_ort'])


def test_device_and_vision_engine_parameters(rt, tmp_path):
    with pytest.raises(ParameterError, match="device 'cuda' is for precision int4_ort"):
        VLAPolicy(cli_args=['--ros-args', '-p', 'device:=cuda'])
    with pytest.raises(ParameterError, match="device must be 'cpu' or 'cuda'"):
        VLAPolicy(cli_args=['--ros-args', '-p', 'device:=npu'])
    with pytest.raises(ParameterError, match='vision engine .* not found'):
        make_policy(f'vision_engine:={tmp_path / "nope.onnx"}')


def test_wrong_model_directory_and_parameters_are_clear_errors(rt, tmp_path):
    with pytest.raises(ParameterError, match='no config.json'):
        make_policy(f'model_path:={tmp_path}')
    with pytest.raises(ParameterError, match=r"unnorm_key 'nope'.*bridge_orig"):
        make_policy('unnorm_key:=nope')
    with pytest.raises(ParameterError, match='precision must be one of'):
        VLAPolicy(cli_args=['--ros-args', '-p', 'precision:=int3'])
    with pytest.raises(ParameterError, match=r'int4_group_size must be 0 \(per channel\)'):
        VLAPolicy(cli_args=['--ros-args', '-p', 'int4_group_size:=-1'])
    with pytest.raises(ParameterError, match='control_period_s must be > 0'):
        VLAPolicy(cli_args=['--ros-args', '-p', 'control_period_s:=0.0'])


def test_orin_vla_config_sets_only_declared_parameters(rt):
    args = ['--ros-args', '--params-file', str(config_path('orin_vla.yaml'))]
    node = VLAPolicy(cli_args=args)
    check_node_parameters(node, args)  # raises on a parameter the node does not declare
    assert node.model_path == 'models/openvla-tiny' and node.unnorm_key == 'bridge_orig'
    assert node.max_rate_hz > 0 and node.precision == 'int4_ort'   # the fastest CPU path


def test_defaults_run_the_shipped_tiny_model(rt):
    node = VLAPolicy(cli_args=['--ros-args', '-p', 'instruction:=wave'])
    node.on_configure()
    d = node.policy.describe()
    assert Path(d['path']).name == 'openvla-tiny' and d['precision'] == 'fp32'
    assert node.policy.unnorm_key == 'bridge_orig'
    action = node.step(Harness().frame(2, 3))
    p = node.policy
    result = p.predict(rgb(2), 'wave')
    np.testing.assert_array_equal(action, result.action)
    check_action_from_tokens(result, p)
    # deterministic: the same frame and instruction give the same logits, bit for bit
    again = p.predict(rgb(2), 'wave')
    np.testing.assert_array_equal(again.bin_logits, result.bin_logits)
    np.testing.assert_array_equal(again.tokens, result.tokens)
    # the instruction and the image both reach the decoder
    other_text = p.predict(rgb(2), 'open the drawer')
    other_frame = p.predict(rgb(5), 'wave')
    for other in (other_text, other_frame):
        assert np.abs(other.bin_logits - result.bin_logits).max() > 1e-3
        check_action_from_tokens(other, p)
