"""The one behaviour-cloning loop (`qail_ros.training.bc.fit`): it trains exactly as the plain
loop it replaces, its schedules, its refusals, checkpoints, and progress logging."""
import logging
import math

import pytest
import torch
from torch import nn

from qail_ros.errors import ParameterError
from qail_ros.training.bc import fit, make_scheduler, warmup_cosine


@pytest.fixture(autouse=True)
def one_process(monkeypatch):
    for var in ('WORLD_SIZE', 'RANK', 'LOCAL_RANK', 'TORCHELASTIC_RESTART_COUNT'):
        monkeypatch.delenv(var, raising=False)
    torch.set_num_threads(1)


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=g)
    return x, torch.tanh(x @ torch.tensor([[0.5], [-1.0], [0.3]]))


def _net():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))


def test_fit_is_the_plain_adamw_cosine_loop():
    """Batches with replacement from a seeded generator, AdamW, cosine to 0: the same weights
    as the loop written out by hand."""
    x, y = _data()
    steps, batch, lr = 12, 8, 1e-2
    net = _net()
    run = fit(net, lambda m, idx, step: (((m(x[idx]) - y[idx]) ** 2).mean(), {}), len(x),
              steps=steps, lr=lr, batch=batch, weight_decay=0.1, schedule='cosine',
              sampling='replacement', seed=5)
    ref = _net()
    opt = torch.optim.AdamW(ref.parameters(), lr=lr, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    gen = torch.Generator().manual_seed(5)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=gen)
        opt.zero_grad()
        ((ref(x[idx]) - y[idx]) ** 2).mean().backward()
        opt.step()
        sched.step()
    for a, b in zip(net.parameters(), ref.parameters()):
        assert torch.allclose(a, b, atol=1e-7)
    assert [r['step'] for r in run.history] == list(range(1, steps + 1))
    assert run.history[-1]['loss'] < run.history[0]['loss']


def test_schedules():
    p = [nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD(p, lr=1.0)
    assert make_scheduler(opt, 'constant', 10) is None and make_scheduler(opt, None, 10) is None
    sched = make_scheduler(torch.optim.SGD(p, lr=1.0), 'cosine', 10, final=0.05)
    rates = []
    for _ in range(11):
        rates.append(sched.get_last_lr()[0])
        sched.optimizer.step()
        sched.step()
    assert rates[0] == pytest.approx(1.0) and rates[5] == pytest.approx(0.525)
    assert rates[10] == pytest.approx(0.05)
    w = warmup_cosine(torch.optim.SGD(p, lr=1.0), 100)      # 5 warm-up steps, then to 10 %
    factor = w.lr_lambdas[0]
    assert [factor(i) for i in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert factor(100) == pytest.approx(0.1) and factor(52) == pytest.approx(0.55, abs=0.01)
    with pytest.raises(ParameterError, match='schedule'):
        make_scheduler(opt, 'linear', 10)


def test_fit_refuses_what_it_cannot_train():
    x, y = _data()
    frozen = _net().requires_grad_(False)
    with pytest.raises(ParameterError, match='nothing to train'):
        fit(frozen, lambda m, i, s: (m(x[i]).sum(), {}), len(x), steps=1, lr=1e-3, batch=8)
    with pytest.raises(ParameterError, match='optimizer'):
        fit(_net(), lambda m, i, s: (m(x[i]).sum(), {}), len(x), steps=1, lr=1e-3, batch=8,
            optimizer='sgd')


def test_fit_checkpoints_and_resumes(tmp_path):
    x, y = _data()

    def loss(m, idx, step):
        return ((m(x[idx]) - y[idx]) ** 2).mean(), {}
    kw = dict(steps=6, lr=1e-2, batch=8, schedule='warmup_cosine', seed=2)
    whole = _net()
    fit(whole, loss, len(x), **kw, checkpoint_dir=tmp_path, checkpoint_every=3)
    assert (tmp_path / 'step-00000003' / 'state.pt').is_file()
    resumed = _net()              # continues at step 4: weights, AdamW, schedule, batches
    run = fit(resumed, loss, len(x), **kw, resume=str(tmp_path / 'step-00000003'))
    assert run.resumed_from == tmp_path / 'step-00000003'
    for a, b in zip(whole.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_progress_goes_to_stderr_once_shown(capsys):
    from qail_ros.training.logs import show_progress
    show_progress()
    show_progress()                        # a second call adds no second handler
    logging.getLogger('qail_ros.physics.bc').info('bc step 1/2 loss 0.5')
    logging.getLogger('qail_ros.bag').info('not training progress')
    err = capsys.readouterr().err
    assert err.count('bc step 1/2 loss 0.5') == 1 and 'not training' not in err
