"""The QAIL trainer on a tiny MLP with synthetic data (a stand-in fake quantizer, no physics)."""
import pytest
import torch
from torch import nn

from qail_ros.qail.config import TrainConfig
from qail_ros.qail.data import SOURCE_FP, ImitationData
from qail_ros.qail.trainer import QAILTrainer, dist_info, make_student, output_gap

from qail_fakequant import fake_quantize


class TinyPolicy(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                                 nn.Linear(64, 2), nn.Tanh())

    def forward(self, x):
        return self.net(x)


@pytest.fixture()
def setup():
    torch.manual_seed(0)
    teacher = TinyPolicy().eval()
    obs = torch.randn(512, 4)
    with torch.no_grad():
        fp_act = teacher(obs)
    expert_act = (fp_act + 0.05 * torch.randn_like(fp_act)).clamp(-1, 1)
    data = ImitationData.from_sources(expert=(obs[:256], expert_act[:256]),
                                      fp=(obs[256:], fp_act[256:]))
    held_out = torch.randn(256, 4)
    return teacher, data, held_out


def cfg(**kw):
    base = dict(bits='w3a3', steps=150, batch_size=64, lr=3e-3, progress=False, calib_samples=256)
    base.update(kw)
    return TrainConfig(**base)


def test_single_process_is_not_distributed(monkeypatch):
    monkeypatch.delenv('WORLD_SIZE', raising=False)
    assert dist_info() == (0, 1, False)


def test_qail_qbc_closes_the_gap_left_by_ptq(setup):
    teacher, data, held_out = setup
    ptq = QAILTrainer(teacher, cfg(method='ptq_rtn'), data, quantize_fn=fake_quantize).train()
    assert ptq.history == []
    res = QAILTrainer(teacher, cfg(method='qail_qbc'), data, quantize_fn=fake_quantize).train()
    gap_ptq = output_gap(ptq.student, teacher, held_out)
    gap_qbc = output_gap(res.student, teacher, held_out)
    assert gap_ptq > 0.02  # 3-bit quantization really hurts the tiny policy
    assert gap_qbc < 0.6 * gap_ptq
    assert {'loss', 'l_qail', 'l_qbc'} <= set(res.history[-1])
    # the teacher stayed frozen
    assert all(not p.requires_grad for p in teacher.parameters())


def test_wqbc_weights_and_onpolicy_pool(setup):
    teacher, data, _ = setup
    calls = []

    def collector(student, k):
        calls.append(k)
        assert not student.training  # rolled out in eval mode
        return torch.randn(32, 4) * 2  # states off the data distribution

    trainer = QAILTrainer(teacher, cfg(method='qail_wqbc', steps=40, onpolicy_every=20), data,
                          collector=collector, quantize_fn=fake_quantize)
    student = make_student(teacher, trainer.config, data.obs[:128], fake_quantize)
    res = trainer.train(student)
    assert calls == [0, 1]
    assert res.onpolicy_states == 64 and len(trainer.pool_obs) == 64
    assert res.threshold is not None
    w = trainer.data_weights
    assert set(w.unique().tolist()) == {1.0, 2.0}
    assert 0.1 < float((w == 2.0).float().mean()) < 0.35  # about the top 20%
    assert trainer.pool_weights.shape == (64,)


def test_lppd_trains_on_teacher_states_only(setup):
    teacher, data, held_out = setup
    trainer = QAILTrainer(teacher, cfg(method='lppd', steps=20), data,
                          quantize_fn=fake_quantize)
    seen = []
    real = trainer.hooks.batch

    def spy(idx, step):
        batch = real(idx, step)
        seen.append(trainer.hooks.index[idx])
        return batch
    trainer.hooks.batch = spy
    res = trainer.train()
    rows = torch.cat(seen)
    assert len(trainer.hooks.index) == 256 and len(rows) == 20 * 64
    assert bool((data.source[rows] == SOURCE_FP).all())
    assert 'l_qail' not in res.history[-1]


def _real_quant():
    try:
        from qail_ros.quant import quantize_  # noqa: F401
    except ImportError:
        pytest.skip('qail_ros.quant is not available')


def test_with_qail_ros_quant_qail_qbc_beats_ptq(setup):
    _real_quant()
    teacher, data, held_out = setup
    ptq = QAILTrainer(teacher, cfg(method='ptq_rtn'), data).train()
    res = QAILTrainer(teacher, cfg(method='qail_qbc'), data).train()
    ptq_gap = output_gap(ptq.student, teacher, held_out)
    assert output_gap(res.student, teacher, held_out) < 0.6 * ptq_gap


def test_student_init_ptq_starts_as_the_rtn_policy(setup):
    _real_quant()
    teacher, data, held_out = setup
    calib = data.obs[:256]
    rtn = make_student(teacher, cfg(method='ptq_rtn'), calib)
    from_ptq = make_student(teacher, cfg(method='qat', student_init='ptq'), calib)
    from_lsq = make_student(teacher, cfg(method='qat', student_init='lsq'), calib)
    with torch.no_grad():
        r, p, s = rtn.eval()(held_out), from_ptq.eval()(held_out), from_lsq.eval()(held_out)
    assert torch.allclose(r, p, atol=1e-5)
    assert not torch.allclose(r, s, atol=1e-3)
    assert any(q.requires_grad for q in from_ptq.parameters())  # still trainable (LSQ steps)


def test_sis_cache_file_is_written_then_reused(setup, tmp_path):
    teacher, data, _ = setup
    path = tmp_path / 'sis.jsonl'
    c = cfg(method='qail_wqbc', steps=2, sis_cache=str(path))
    first = QAILTrainer(teacher, c, data, quantize_fn=fake_quantize)
    first.train()
    assert path.is_file() and len(path.read_text().splitlines()) == len(data) + 1  # + meta
    second = QAILTrainer(teacher, c, data, quantize_fn=fake_quantize)

    def no_teacher(x):
        pytest.fail('recomputed a cached score')
    second.teacher = no_teacher  # every score must come from the cache
    second.hooks.prepare_weights()
    assert torch.equal(second.data_weights, first.data_weights)
    other = QAILTrainer(teacher, c.replace(state_scale=1.0), data, quantize_fn=fake_quantize)
    with pytest.raises(Exception, match='SIS cache'):
        other.hooks.prepare_weights()
