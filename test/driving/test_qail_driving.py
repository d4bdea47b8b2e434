"""QAIL on driving: packed observations round-trip, the packed CILRS, the quantized student."""
import numpy as np
import pytest

torch = pytest.importorskip('torch', reason='QAIL on driving is torch')

from qail_ros.cilrs.model import build_model  # noqa: E402
from qail_ros.cilrs.train import CILRSPolicy, small_config  # noqa: E402
from qail_ros.driving.qail_driving import PackedCILRS, PackedPolicy, pack, unpack  # noqa: E402

W, H = 64, 32


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _batch(n=5, seed=0):
    rng = np.random.default_rng(seed)
    return {'image': rng.integers(0, 256, size=(n, H, W, 3), dtype=np.uint8),
            'speed': rng.uniform(0, 30, size=n).astype(np.float32),
            'command': rng.choice([1, 2, 3, 4, 5, 6, -1], size=n).astype(np.int64)}


def test_pack_unpack_round_trip():
    b = _batch()
    packed = pack(b['image'], b['speed'], b['command'])
    assert packed.shape == (5, H * W * 3 + 2) and packed.dtype == torch.float32
    image, speed, command = unpack(packed, H, W)
    assert np.array_equal(image.numpy().astype(np.uint8), b['image'])
    assert np.allclose(speed.numpy(), b['speed'])
    assert command.tolist() == b['command'].tolist()
    with pytest.raises(ValueError, match='pack them'):
        unpack(packed, H, W + 1)


def test_packed_cilrs_matches_the_dict_policy():
    model = build_model(small_config(W, H, base_width=8)).eval()
    b = _batch()
    direct = CILRSPolicy(model)(b)
    packed = PackedPolicy(PackedCILRS(model))(b)
    assert packed.shape == (5, 2)
    assert torch.allclose(direct, packed, atol=1e-5)


@pytest.mark.parametrize('method', ['ptq_rtn', 'qail'])
def test_student_quantizes_every_conv_and_linear(method):
    from torch import nn

    from qail_ros.qail.config import TrainConfig
    from qail_ros.qail.data import ImitationData
    from qail_ros.qail.trainer import QAILTrainer
    from qail_ros.quant.api import quantization_report
    from qail_ros.quant.modules import QUANT_MODULES
    teacher = PackedCILRS(build_model(small_config(W, H, base_width=8)).fused()).eval()
    n_float = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in teacher.modules())
    b = _batch(16)
    obs = pack(b['image'], b['speed'], b['command'])
    data = ImitationData(obs, torch.zeros(16, 2))
    cfg = TrainConfig(method=method, bits='w4a4', steps=2, batch_size=8, progress=False,
                      calib_samples=16)
    res = QAILTrainer(teacher, cfg, data).train()
    student = res.student
    report = quantization_report(student)
    assert report['skipped'] == {}
    assert len(report['layers']) == n_float
    assert sum(isinstance(m, QUANT_MODULES) for m in student.modules()) == n_float
    out = student(obs[:3])
    assert out.shape == (3, 2) and torch.isfinite(out).all()
    # W4A4 really changes the outputs
    assert not torch.allclose(out, teacher(obs[:3]), atol=1e-6)
