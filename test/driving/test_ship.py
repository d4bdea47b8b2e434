"""qail_ros.driving.ship's pieces on a tiny CILRS: a QAIL driving student (PackedCILRS) saved
with save_cilrs_student runs as a W4A4 engine bit-exact to the student, and the Conv-only W8A8
build quantizes the convolutions but not the MLP heads (its own cache entry, recorded in the
manifest)."""
import numpy as np
import pytest

torch = pytest.importorskip('torch')
pytest.importorskip('onnxruntime')
pytest.importorskip('onnx')


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    from qail_ros.cilrs.export import synthetic_calibration
    from qail_ros.cilrs.model import build_model, save_checkpoint
    from qail_ros.cilrs.train import small_config
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp('ship')
    model = build_model(small_config(64, 32, base_width=8), seed=3).eval()
    source = save_checkpoint(model, root / 'fp.safetensors')
    return root, model, source, synthetic_calibration(model.config, 3, seed=1)


def test_saved_driving_student_is_the_w4a4_engine(tiny):
    from qail_ros import quant
    from qail_ros.cilrs.export import build_engines
    from qail_ros.driving.qail_driving import PackedCILRS, pack
    from qail_ros.driving.ship import save_cilrs_student
    from qail_ros.engines import load_engine
    root, model, source, calib = tiny
    student = PackedCILRS(model.fused()).eval()
    rng = np.random.default_rng(0)
    packed = pack(rng.integers(0, 256, (8, 32, 64, 3), dtype=np.uint8),
                  rng.uniform(0, 20, 8).astype(np.float32), np.full(8, 4))
    quant.quantize_(student, quant.lsq_config(4, 4), calibration=[(packed,)])
    path = save_cilrs_student(student, root / 'student.safetensors')
    engine = load_engine(build_engines(source, root / 'engines', ['w4a4_int8'],
                                       w4a4_student=path)['w4a4_int8'])
    assert not engine.kept_float
    for image, speed in calib:
        got = engine.infer({'image': image, 'speed': speed})
        with torch.no_grad():
            want = student.model(torch.from_numpy(image), torch.from_numpy(speed))
        assert torch.equal(torch.from_numpy(got['branches']), want[0])
        assert torch.equal(torch.from_numpy(got['speed_pred']), want[1])


def test_conv_only_w8a8_keeps_the_heads_in_float(tiny):
    import onnx

    from qail_ros.cilrs.export import build_engines
    from qail_ros.engines.manifest import read_manifest
    root, model, source, calib = tiny
    default = build_engines(source, root / 'w8', ['w8a8_ort'], calibration=calib,
                            name='all')['w8a8_ort']
    conv = build_engines(source, root / 'w8', ['w8a8_ort'], calibration=calib, name='conv',
                         w8a8_op_types=('Conv',))['w8a8_ort']

    def quantized_weights(path):
        """Op types whose weight comes out of a DequantizeLinear (an int8 initializer)."""
        g = onnx.load(str(path)).graph
        deq = {o for n in g.node if n.op_type == 'DequantizeLinear' for o in n.output}
        ops = [n for n in g.node if n.op_type in ('Conv', 'Gemm')]
        return ({n.op_type for n in ops if n.input[1] in deq},
                {n.op_type for n in ops if n.input[1] not in deq})

    assert quantized_weights(default) == ({'Conv', 'Gemm'}, set())
    assert quantized_weights(conv) == ({'Conv'}, {'Gemm'})
    m_all, m_conv = read_manifest(default)[1], read_manifest(conv)[1]
    assert m_conv.details['quantized_ops'] == ['Conv']
    assert m_conv.source_hash.endswith('+opsConv') and m_conv.source_hash != m_all.source_hash
    assert m_conv.details['source_model_sha256'] == m_all.details['source_model_sha256']
