"""Every engine agrees with the torch FP32 reference; W4A4-on-int8 is bit-exact to fake quant.

Tolerances (ResNet-18 64x128, random seeded weights, Beta head: outputs are softplus + 1):
  fp32_ort   atol 1e-4 (same math, BatchNorm folded, other kernels)
  bf16_torch atol 0.05 (bfloat16 has 8 mantissa bits)
  w8a8_ort   atol 0.05 on the branch outputs and 0.05 on the speed head
  w4a4_int8  bit-exact (torch.equal) to the fake-quant model it was exported from
"""
import numpy as np
import pytest

from qail_ros.engines import EngineError, load_engine

torch = pytest.importorskip('torch', reason='the reference engine is torch')

TOLERANCE = {'fp32_ort': 1e-4, 'bf16_torch': 0.05, 'w8a8_ort': 0.05}


def _inputs(calib, i=0):
    image, speed = calib[i]
    return {'image': image, 'speed': speed}


@pytest.fixture(scope='module')
def reference(cilrs_engines):
    _, paths, calib = cilrs_engines
    engine = load_engine(paths['fp32_torch'])
    return engine, [engine.infer(_inputs(calib, i)) for i in range(len(calib))]


@pytest.mark.parametrize('kind', sorted(TOLERANCE))
def test_engine_agrees_with_torch_fp32(cilrs_engines, reference, kind):
    _, paths, calib = cilrs_engines
    engine = load_engine(paths[kind])
    engine.warmup(1)
    for i, ref in enumerate(reference[1]):
        out = engine.infer(_inputs(calib, i))
        assert set(out) == {'branches', 'speed_pred'}
        for name in out:
            assert out[name].shape == ref[name].shape and out[name].dtype == np.float32
            np.testing.assert_allclose(out[name], ref[name], atol=TOLERANCE[kind], rtol=0,
                                       err_msg=f'{kind} {name}')
    if kind != 'fp32_ort':  # quantized engines really differ from FP32 (not a copy)
        diff = max(np.abs(engine.infer(_inputs(calib, i))['branches'] - ref['branches']).max()
                   for i, ref in enumerate(reference[1]))
        assert diff > 0


def test_describe_names_precision_backend_and_size(cilrs_engines):
    _, paths, _ = cilrs_engines
    expected = {'fp32_torch': ('fp32', 'torch'), 'bf16_torch': ('bf16', 'torch'),
                'fp32_ort': ('fp32', 'onnxruntime'), 'w8a8_ort': ('w8a8', 'onnxruntime'),
                'w4a4_int8': ('w4a4', 'torch-int8')}
    sizes = {}
    for kind, (precision, backend) in expected.items():
        d = load_engine(paths[kind]).describe()
        assert (d['precision'], d['backend']) == (precision, backend)
        assert d['device_id'].startswith('cpu:') and d['file_bytes'] > 0
        sizes[kind] = d['file_bytes']
    assert sizes['bf16_torch'] < 0.6 * sizes['fp32_torch']
    assert sizes['w8a8_ort'] < 0.3 * sizes['fp32_ort']
    assert sizes['w4a4_int8'] < 0.6 * sizes['w8a8_ort']   # 4-bit codes packed 2 per byte


def test_w8a8_graph_runs_integer_operators(cilrs_engines):
    onnx = pytest.importorskip('onnx')
    _, paths, _ = cilrs_engines
    ops = {n.op_type for n in onnx.load(str(paths['w8a8_ort'])).graph.node}
    assert {'QuantizeLinear', 'DequantizeLinear'} <= ops
    g = onnx.load(str(paths['w8a8_ort'])).graph
    zp_types = {i.data_type for i in g.initializer if i.name.endswith('zero_point')}
    assert onnx.TensorProto.UINT8 in zp_types and onnx.TensorProto.INT8 in zp_types


def test_w4a4_on_int8_is_bit_exact_to_fake_quant(cilrs_engines):
    from qail_ros import quant
    from qail_ros.cilrs.export import quantize_w4a4
    from qail_ros.cilrs.model import load_checkpoint
    source, paths, calib = cilrs_engines
    engine = load_engine(paths['w4a4_int8'])
    kinds = {type(m).__name__ for m in engine.model.modules()}
    assert {'IntConv2d', 'IntLinear'} <= kinds and not engine.kept_float
    assert not any(isinstance(m, quant.QuantConv2d) for m in engine.model.modules())
    # the fake-quant student, rebuilt in memory exactly as the exporter did
    student = quantize_w4a4(load_checkpoint(source), calib)
    loaded_ref = engine.reference_model()
    for i in range(len(calib)):
        x = tuple(torch.from_numpy(a) for a in calib[i])
        with torch.no_grad():
            want = student(*x)
            also = loaded_ref(*x)
        got = engine.infer(_inputs(calib, i))
        for j, name in enumerate(('branches', 'speed_pred')):
            assert torch.equal(torch.from_numpy(got[name]), want[j]), name
            assert torch.equal(also[j], want[j]), name
    # the library's int8 channels-last im2col (IntConv2d) is what the engine runs
    assert any(type(m).__name__ == 'IntConv2d' for m in engine.model.modules())
    # 4-bit numerics: every activation code of the first conv lies in [-8, 7]
    conv1 = engine.model.encoder.conv1
    assert (conv1.qmin, conv1.qmax) == (-8, 7) and conv1.bits_w == 4
    assert int(conv1.qweight.min()) >= -8 and int(conv1.qweight.max()) <= 7


def test_infer_rejects_wrong_input_shape(cilrs_engines):
    _, paths, calib = cilrs_engines
    engine = load_engine(paths['fp32_ort'])
    bad = {'image': np.zeros((1, 3, 32, 32), np.float32), 'speed': calib[0][1]}
    with pytest.raises(EngineError, match='built for'):
        engine.infer(bad)
    with pytest.raises(EngineError, match="input 'speed' missing"):
        engine.infer({'image': calib[0][0]})
