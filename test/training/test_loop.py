"""The training loop in one process: global batches, accumulation, bf16, checkpoints, signals."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from qail_ros.errors import ParameterError
from qail_ros.training.distributed import (Checkpointer, Dist, GlobalBatches, TrainLoop,
                                           resolve_device, resolve_resume)

WORKER = str(Path(__file__).parent / 'ddp_worker.py')


@pytest.fixture(autouse=True)
def one_process(monkeypatch):
    for var in ('WORLD_SIZE', 'RANK', 'LOCAL_RANK', 'TORCHELASTIC_RESTART_COUNT'):
        monkeypatch.delenv(var, raising=False)
    torch.set_num_threads(1)


@pytest.mark.parametrize('mode', GlobalBatches.MODES)
def test_ranks_split_the_global_batch_of_one_process(mode):
    one = GlobalBatches(50, 8, Dist(), seed=3, mode=mode)
    ranks = [GlobalBatches(50, 8, Dist(rank=r, world=2), accum=2, seed=3, mode=mode)
             for r in (0, 1)]
    for _ in range(20):                         # across epochs (50 // 8 = 6 per epoch)
        full = one.next()[0]
        parts = [b.next() for b in ranks]
        assert all(len(p) == 2 and all(len(m) == 2 for m in p) for p in parts)
        assert torch.equal(torch.cat([m for p in parts for m in p]), full)


def test_batch_position_survives_a_state_dict_round_trip():
    a = GlobalBatches(30, 8, seed=1)
    for _ in range(5):
        a.next()
    b = GlobalBatches(30, 8, seed=1)
    b.load_state_dict(a.state_dict())
    for _ in range(10):
        assert torch.equal(a.next()[0], b.next()[0])


def test_a_batch_that_does_not_split_names_the_fix():
    with pytest.raises(ParameterError, match='multiple of 4'):
        GlobalBatches(100, 10, Dist(rank=0, world=2), accum=2)
    with pytest.raises(ParameterError, match='no CUDA'):
        if torch.cuda.is_available():
            pytest.skip('this machine has CUDA')
        resolve_device('cuda')
    assert resolve_device('auto').type == ('cuda' if torch.cuda.is_available() else 'cpu')


def _problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 6, generator=g)
    y = torch.tanh(x[:, :2] - x[:, 2:4])
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 2))
    return x, y, model


def _loop(model, x, y, steps=12, batch=32, accum=1, precision='fp32', ck=None, every=0,
          resume=None):
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, 5, 0.5)

    def loss_fn(m, idx, step):
        return nn.functional.mse_loss(m(x[idx]).float(), y[idx]), {}
    return TrainLoop(model, opt, loss_fn, GlobalBatches(len(x), batch, accum=accum, seed=0),
                     steps=steps, scheduler=sched, grad_clip=1.0, precision=precision,
                     checkpointer=Checkpointer(ck, every) if ck else None, resume=resume,
                     log_every=1)


def test_accumulation_gives_the_full_batch_step():
    x, y, a = _problem()
    _, _, b = _problem()
    la = [r['loss'] for r in _loop(a, x, y).run().history]
    lb = [r['loss'] for r in _loop(b, x, y, accum=4).run().history]
    assert la == pytest.approx(lb, rel=1e-5)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_bf16_autocast_trains_on_cpu():
    x, y, model = _problem()
    hist = _loop(model, x, y, steps=30, precision='bf16').run().history
    assert hist[-1]['loss'] < 0.7 * hist[0]['loss']
    assert all(p.dtype == torch.float32 for p in model.parameters())   # fp32 master weights


def test_resume_from_a_checkpoint_ends_with_the_uninterrupted_weights(tmp_path):
    x, y, full = _problem()
    _loop(full, x, y, ck=tmp_path / 'full', every=4).run()
    assert Checkpointer.latest(tmp_path / 'full').name == 'step-00000012'
    _, _, first = _problem()
    _loop(first, x, y, steps=8, ck=tmp_path / 'ck', every=4).run()     # "stopped" at 8
    _, _, second = _problem(seed=5)                                   # other initial weights
    run = _loop(second, x, y, ck=tmp_path / 'ck', every=4, resume=tmp_path / 'ck').run()
    assert run.resumed_from.name == 'step-00000008' and len(run.history) == 12
    for p, q in zip(full.parameters(), second.parameters()):
        assert torch.equal(p, q)
    with pytest.raises(ParameterError, match='no checkpoint'):
        resolve_resume(tmp_path / 'nothing', None)


def test_sigterm_writes_a_checkpoint_and_resume_finishes_the_run(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    env.pop('WORLD_SIZE', None)
    ck = tmp_path / 'ck'
    args = [sys.executable, WORKER, '--model', 'mlp', '--steps', '20', '--batch', '64',
            '--ckdir', str(ck)]
    proc = subprocess.Popen(args + ['--out', str(tmp_path / 'a'), '--sleep', '0.2',
                                    '--checkpoint-every', '3'], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not (ck / 'latest').is_file():         # training has begun (step 3 is written)
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0 and 'TrainingInterrupted' in out and 'SIGTERM' in out
    stopped = Checkpointer.latest(ck)
    assert stopped is not None and 3 < int(stopped.name.split('-')[1]) < 20
    r = subprocess.run(args + ['--out', str(tmp_path / 'b'), '--resume', str(ck)], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run(args[:-2] + ['--out', str(tmp_path / 'c')], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    b = torch.load(tmp_path / 'b' / 'result.pt', weights_only=False)
    c = torch.load(tmp_path / 'c' / 'result.pt', weights_only=False)
    assert b['steps_run'] == 20 - int(stopped.name.split('-')[1])
    for k in c['weights']:
        assert torch.equal(b['weights'][k], c['weights'][k])


def test_vla_activation_checkpointing_recomputes_the_same_step():
    pytest.importorskip('transformers')
    import numpy as np
    from qail_ros.manipulation.qail_vla import quantize_awq, train_qlora
    from qail_ros.manipulation.tasks import COLORS, PLATES, TASKS, instruction_for
    from qail_ros.manipulation.vla import Samples, SmallVLA
    teacher = SmallVLA.create(seed=0, llm_hidden=64, llm_layers=2)
    g = np.random.default_rng(0)
    n = 16
    instr = [instruction_for(TASKS[i % 2], COLORS[i % 3], PLATES[i % 2]) for i in range(n)]
    data = Samples(g.integers(0, 256, (n, 48, 48, 3), dtype=np.uint8), instr,
                   g.uniform(-1, 1, (n, 7)).astype(np.float32), ['fp'] * n)
    runs = []
    for checkpointing in (False, True):
        student = quantize_awq(teacher, data, scheme='rtn')
        hist: list = []
        train_qlora(student, teacher, data, steps=3, qbc_lambda=1.0, rank=4, batch=8,
                    lr=5e-3, activation_checkpointing=checkpointing, grad_accum=2, history=hist)
        runs.append([r['loss'] for r in hist])
        lm = student.model.language_model
        assert lm.model.gradient_checkpointing == checkpointing
    assert runs[0] == pytest.approx(runs[1], rel=1e-5)
