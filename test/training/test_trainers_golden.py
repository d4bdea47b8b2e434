"""Every trainer gives the numbers it gave before the trainers became one (`training.bc.fit`,
`QAILTrainer` + hooks): losses and weight sums recorded at commit 3c8f1e4 (the code before
issue #14's refactor) on tiny runs. Tolerance 1e-4 relative: the same code on another CPU may
round differently; a changed RNG order, batch, schedule or loss moves them by far more."""
import numpy as np
import pytest
import torch
from torch import nn

REL = 1e-4


@pytest.fixture(autouse=True)
def one_process(monkeypatch):
    for var in ('WORLD_SIZE', 'RANK', 'LOCAL_RANK', 'TORCHELASTIC_RESTART_COUNT'):
        monkeypatch.delenv(var, raising=False)
    torch.set_num_threads(1)


def psum(m):
    return float(sum(p.detach().double().abs().sum() for p in m.parameters()))


def test_physics_bc():
    from qail_ros.physics.bc import train_bc
    g = np.random.default_rng(0)
    obs = g.normal(size=(300, 5)).astype(np.float32)
    pol, info = train_bc(obs, np.tanh(obs[:, :2] * 0.7), hidden=32, layers=2, steps=40,
                         batch=32, lr=3e-3, log_every=10)
    assert info['final_mse'] == pytest.approx(0.06729645282030106, rel=REL)
    assert psum(pol) == pytest.approx(149.52628169076343, rel=REL)


def test_cilrs_bc():
    from qail_ros.cilrs.train import small_config, train_bc
    g = np.random.default_rng(0)
    n = 48
    d = {'image': g.integers(0, 256, (n, 32, 64, 3), dtype=np.uint8),
         'speed': g.uniform(0, 20, n).astype(np.float32),
         'command': g.choice([1, 2, 3, 4], n), 'act': g.uniform(-1, 1, (n, 2)).astype(np.float32)}
    m, hist = train_bc(d, small_config(64, 32, base_width=8), steps=6, batch_size=16, lr=1e-3,
                       log_every=2)
    assert [h['loss'] for h in hist] == pytest.approx(
        [0.5338776111602783, 0.45388263463974, 0.4237339496612549, 0.42763128876686096], rel=REL)
    assert psum(m) == pytest.approx(20961.86404935851, rel=REL)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 2), nn.Tanh())

    def forward(self, x):
        return self.net(x)


#: method, extra config -> (logged losses, |student| sum, on-policy states, wQBC threshold)
MLP = {
    ('qail_qbc', 10): ([0.11850493, 0.09143337, 0.11379215, 0.08202329, 0.0930549, 0.07808488],
                       46.302452878211625, 48, None),
    ('qat', 0): ([0.00464837, 0.00589027, 0.0055187, 0.00488411, 0.00427364, 0.00347067],
                 46.07105300150579, 0, None),
    ('qail_wqbc', 10): ([0.14452429, 0.11595859, 0.14793973, 0.08674616, 0.12703516,
                         0.07368483], 46.187901801313274, 48, 0.004434713628143072),
    ('lppd', 0): ([0.00411104, 0.00444354, 0.00391761, 0.00422241, 0.00410721, 0.00252587],
                  46.47569848841522, 0, None),
}


@pytest.mark.parametrize('method,every', list(MLP))
def test_qail_trainer_on_the_mlp(method, every):
    pytest.importorskip('qail_ros.quant')
    from qail_ros.qail.config import TrainConfig
    from qail_ros.qail.data import ImitationData
    from qail_ros.qail.trainer import QAILTrainer
    torch.manual_seed(0)
    teacher = Tiny().eval()
    obs = torch.randn(256, 4)
    with torch.no_grad():
        a = teacher(obs)
    data = ImitationData.from_sources(expert=(obs[:128], a[:128] + 0.05),
                                      fp=(obs[128:], a[128:]))

    def collector(student, k):
        return torch.randn(16, 4, generator=torch.Generator().manual_seed(k)) * 2

    cfg = TrainConfig(method=method, bits='w4a4', steps=30, batch_size=32, lr=3e-3,
                      progress=False, calib_samples=64, log_every=5, onpolicy_every=every)
    r = QAILTrainer(teacher, cfg, data, collector=collector).train()
    losses, total, states, threshold = MLP[(method, every)]
    assert [h['loss'] for h in r.history] == pytest.approx(losses, rel=REL)
    assert psum(r.student) == pytest.approx(total, rel=REL)
    assert r.onpolicy_states == states
    assert r.threshold == (None if threshold is None else pytest.approx(threshold, rel=REL))


@pytest.fixture(scope='module')
def vla_and_states():
    pytest.importorskip('mujoco')
    from qail_ros.manipulation.vla import SmallVLA, rollouts
    torch.manual_seed(0)
    vla = SmallVLA.create(0, llm_hidden=64, llm_layers=2)
    states, _ = rollouts('place', [0, 1, 2], None, label='expert')
    return vla, states


def test_vla_behaviour_cloning(vla_and_states):
    import copy

    from qail_ros.manipulation.vla import SmallVLA, bc_train
    vla, states = vla_and_states
    v = SmallVLA(copy.deepcopy(vla.model), vla.tokenizer, vla.stats)
    losses = bc_train(v, states, steps=3, batch=8, lr=1e-3)
    assert losses == pytest.approx([6.208914756774902, 6.082287788391113, 5.937900066375732],
                                   rel=REL)
    assert psum(v.model) == pytest.approx(11581.208521764158, rel=REL)


def test_vla_qlora_students(vla_and_states):
    from qail_ros.manipulation.qail_vla import quantize_awq, train_qlora
    from qail_ros.quant.lora import lora_state_dict
    vla, states = vla_and_states
    cases = [
        (dict(qbc_lambda=0.0),
         ([6.2103295, 5.7627006, 5.5671887, 5.5222263], 5.765611290931702, None, 0,
          1217.0772834548843)),
        (dict(qbc_lambda=1.0, weights=np.linspace(1, 2, len(states)), tasks=('lift',),
              onpolicy_rounds=2, onpolicy_episodes=1,
              onpolicy_weight_fn=lambda s: np.full(len(s), 2.0)),
         ([7.9418626, 25.2749062, 27.8238411, 24.799305], 6.304516077041626,
          15.155463337898254, 90, 1205.813007294375)),
    ]
    for kw, (losses, qail, qbc, pooled, total) in cases:
        torch.manual_seed(0)
        student = quantize_awq(vla, states, n_calibration=8)
        hist = []
        info = train_qlora(student, vla, states, steps=4, rank=4, batch=8, lr=5e-2,
                           history=hist, **kw)
        assert [h['loss'] for h in hist] == pytest.approx(losses, rel=REL)
        assert info['final_qail'] == pytest.approx(qail, rel=REL)
        assert info['final_qbc'] == (None if qbc is None else pytest.approx(qbc, rel=REL))
        assert info['onpolicy_states'] == pooled
        adapters = lora_state_dict(student.model.language_model)
        assert float(sum(t.double().abs().sum() for t in adapters.values())) == \
            pytest.approx(total, rel=REL)
