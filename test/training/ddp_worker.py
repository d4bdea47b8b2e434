"""A tiny training run for the distributed tests: run it plainly or under torchrun.

    python ddp_worker.py --model mlp --out DIR [--steps 20 --batch 64 ...]
    torchrun --nproc-per-node 2 ddp_worker.py --model mlp --out DIR ...

`mlp`: QAILTrainer (qail_qbc, real LSQ W4A4 of qail_ros.quant) on the physics MLP student;
`vla`: train_qlora (QAIL+QBC) of a small INT4 VLA student; `bc`, `vla_bc`, `cilrs_bc`:
the behaviour-cloning loops (physics MLP, the small VLA with its auxiliary heads, CILRS).
Rank 0 writes DIR/result.pt with the loss history and the trained weights (the adapters for
the VLA). `--sleep S` slows each step
(the kill tests), `--crash-at K` makes rank 1 exit at step K on a first attempt (elastic
restart tests).
"""
import argparse
import os
import sys
import time

import numpy as np
import torch


CALLS = {'n': 0}


def _slow_and_crash(module, args):
    """Forward pre-hook: count the steps this process ran, sleep per step, and die once at
    step K (first attempt only)."""
    calls = CALLS
    attempt = int(os.environ.get('TORCHELASTIC_RESTART_COUNT', '0') or 0)
    rank = int(os.environ.get('RANK', '0'))

    def hook(_m, _inputs):
        calls['n'] += 1
        if args.sleep:
            time.sleep(args.sleep)
        if args.crash_at and attempt == 0 and rank == 1 and calls['n'] >= args.crash_at:
            os._exit(3)
    module.register_forward_pre_hook(hook)


def run_mlp(args):
    from qail_ros.physics.policy import MLPPolicy
    from qail_ros.qail.config import TrainConfig
    from qail_ros.qail.data import ImitationData
    from qail_ros.qail.trainer import QAILTrainer, make_student
    torch.manual_seed(0)
    teacher = MLPPolicy(8, 3, hidden=64, layers=2)
    obs = torch.randn(1024, 8)
    teacher.set_normalization(obs)
    teacher.eval()
    with torch.no_grad():
        fp = teacher(obs)
    expert = (fp + 0.05 * torch.randn_like(fp)).clamp(-1, 1)
    data = ImitationData.from_sources(expert=(obs[:512], expert[:512]), fp=(obs[512:], fp[512:]))
    cfg = TrainConfig(method='qail_qbc', bits='w4a4', steps=args.steps, batch_size=args.batch,
                      lr=3e-3, progress=False, calib_samples=256, log_every=1,
                      grad_accum=args.accum, checkpoint_every=args.checkpoint_every,
                      checkpoint_dir=args.ckdir, resume=args.resume, precision=args.precision)
    trainer = QAILTrainer(teacher, cfg, data)
    student = make_student(teacher, cfg, data.obs[:256])
    _slow_and_crash(student, args)
    res = trainer.train(student)
    return res.history, {k: v.detach().clone() for k, v in res.student.state_dict().items()}


def run_vla(args):
    from qail_ros.manipulation.qail_vla import quantize_awq, train_qlora
    from qail_ros.manipulation.tasks import COLORS, PLATES, TASKS, instruction_for
    from qail_ros.manipulation.vla import Samples, SmallVLA
    from qail_ros.quant.lora import lora_state_dict
    teacher = SmallVLA.create(seed=0, llm_hidden=64, llm_layers=1)
    teacher.model.eval()
    g = np.random.default_rng(0)
    n = 64
    instr = [instruction_for(TASKS[i % 2], COLORS[i % 3], PLATES[i % 2]) for i in range(n)]
    data = Samples(g.integers(0, 256, (n, 48, 48, 3), dtype=np.uint8), instr,
                   g.uniform(-1, 1, (n, 7)).astype(np.float32), ['fp'] * n)
    student = quantize_awq(teacher, data, scheme='rtn')
    _slow_and_crash(student.model, args)
    history = []
    train_qlora(student, teacher, data, steps=args.steps, qbc_lambda=1.0, rank=4,
                lr=5e-3, batch=args.batch, seed=0, grad_accum=args.accum,
                checkpoint_dir=args.ckdir, checkpoint_every=args.checkpoint_every,
                resume=args.resume, precision=args.precision, history=history)
    weights = lora_state_dict(student.model.language_model)
    return history, {k: v.clone() for k, v in weights.items()}


def run_bc(args):
    from qail_ros.physics.bc import train_bc
    g = np.random.default_rng(0)
    obs = g.normal(size=(512, 6)).astype(np.float32)
    act = np.tanh(obs[:, :2] - obs[:, 2:4])
    history = []
    policy, _ = train_bc(obs, act, hidden=32, layers=2, steps=args.steps, batch=args.batch,
                         lr=3e-3, log_every=1, grad_accum=args.accum,
                         checkpoint_dir=args.ckdir, checkpoint_every=args.checkpoint_every,
                         resume=args.resume, history=history)
    return history, {k: v.detach().clone() for k, v in policy.state_dict().items()}


def run_vla_bc(args):
    from qail_ros.manipulation.tasks import COLORS, PLATES, SCENE_DIM, TASKS, instruction_for
    from qail_ros.manipulation.vla import Samples, SmallVLA, bc_train
    vla = SmallVLA.create(seed=0, llm_hidden=64, llm_layers=1)
    g = np.random.default_rng(0)
    n = 32
    instr = [instruction_for(TASKS[i % 2], COLORS[i % 3], PLATES[i % 2]) for i in range(n)]
    data = Samples(g.integers(0, 256, (n, 48, 48, 3), dtype=np.uint8), instr,
                   g.uniform(-1, 1, (n, 7)).astype(np.float32), ['fp'] * n,
                   g.normal(size=(n, SCENE_DIM + 6)).astype(np.float32))
    losses = bc_train(vla, data, steps=args.steps, batch=args.batch, grad_accum=args.accum)
    return ([{'loss': x} for x in losses],
            {k: v.detach().clone() for k, v in vla.model.state_dict().items()})


def run_cilrs_bc(args):
    from qail_ros.cilrs.train import small_config, train_bc
    g = np.random.default_rng(0)
    n = 48
    demos = {'image': g.integers(0, 256, (n, 56, 128, 3), dtype=np.uint8),
             'speed': g.uniform(0, 10, n), 'command': g.integers(1, 4, n),
             'act': g.uniform(-1, 1, (n, 2))}
    model, hist = train_bc(demos, small_config(128, 56), steps=args.steps,
                           batch_size=args.batch, log_every=1)
    return hist, {k: v.detach().clone() for k, v in model.state_dict().items()}


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument('--model', choices=('mlp', 'vla', 'bc', 'vla_bc', 'cilrs_bc'),
                   default='mlp')
    p.add_argument('--out', required=True)
    p.add_argument('--steps', type=int, default=20)
    p.add_argument('--batch', type=int, default=64)
    p.add_argument('--accum', type=int, default=1)
    p.add_argument('--precision', default='fp32')
    p.add_argument('--checkpoint-every', type=int, default=0)
    p.add_argument('--ckdir', default=None)
    p.add_argument('--resume', default=None)
    p.add_argument('--sleep', type=float, default=0.0)
    p.add_argument('--crash-at', type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    run = {'mlp': run_mlp, 'vla': run_vla, 'bc': run_bc, 'vla_bc': run_vla_bc,
           'cilrs_bc': run_cilrs_bc}[args.model]
    history, weights = run(args)
    from qail_ros.training.distributed import setup, teardown
    dist = setup('cpu')
    if dist.is_main:
        os.makedirs(args.out, exist_ok=True)
        torch.save({'history': history, 'weights': weights, 'world': dist.world,
                    'steps_run': CALLS['n']},
                   os.path.join(args.out, 'result.pt'))
    teardown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
