"""The one supervised loop: behaviour cloning (and the QAIL trainer's steps) over a data set.

    dist = setup('auto')
    run = fit(policy, loss_fn, len(obs), steps=2000, lr=1e-3, batch=256, dist=dist,
              schedule='cosine', sampling='replacement', seed=0,
              checkpoint_dir='OUT/checkpoints', checkpoint_every=500)
    run.history                                  # rank-averaged losses of the logged steps

`loss_fn(model, idx, step) -> (loss, {name: scalar})` computes the loss of one micro-batch of
sample positions `idx` (a model-specific hook: regression, branched L1, token cross-entropy
...); everything else is here: the optimizer (AdamW or Adam), the learning-rate schedule, the
global batches (`GlobalBatches`, the same samples whatever the number of processes), and
`TrainLoop` (torchrun / DistributedDataParallel, bf16 autocast, accumulation, gradient
clipping, checkpoints and resume). physics/bc.py, cilrs/train.py and manipulation/vla.py
clone behaviour through it; `qail_ros.qail.trainer.QAILTrainer` runs its QAIL / QBC / LPPD
losses through it too.

This module is layer 2: it imports torch and qail_ros.errors only (no model, no domain).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from qail_ros.errors import ParameterError
from qail_ros.training.distributed import (Checkpointer, Dist, GlobalBatches, LoopResult,
                                           LossFn, TrainLoop, setup)

__all__ = ['fit', 'make_scheduler', 'warmup_cosine', 'SCHEDULES', 'OPTIMIZERS']

#: learning-rate schedules of `fit` (or pass a callable optimizer -> scheduler)
SCHEDULES = ('constant', 'cosine', 'warmup_cosine')

#: optimizers of `fit`, by name
OPTIMIZERS = {'adamw': torch.optim.AdamW, 'adam': torch.optim.Adam}

Scheduler = Callable[[torch.optim.Optimizer], Any]


def warmup_cosine(opt: torch.optim.Optimizer, steps: int, warmup: float = 0.05,
                  final: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `warmup` of the steps, then cosine decay to `final` of the rate."""
    w = max(int(steps * warmup), 1)
    half = (1.0 - final) / 2

    def factor(i: int) -> float:
        if i < w:
            return (i + 1) / w
        return final + half * (1 + math.cos(math.pi * min((i - w) / max(steps - w, 1), 1.0)))
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def make_scheduler(opt: torch.optim.Optimizer, schedule: str | Scheduler | None, steps: int,
                   *, final: float = 0.0, warmup: float = 0.05) -> Any:
    """The scheduler of a named schedule: None / 'constant' (none), 'cosine' (decay to
    `final` of the rate over `steps`), 'warmup_cosine' (`warmup_cosine`); a callable is
    called with the optimizer."""
    if schedule is None or schedule == 'constant':
        return None
    if callable(schedule):
        return schedule(opt)
    if schedule == 'cosine':
        t = max(1, int(steps))
        return torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: final + (1.0 - final) * 0.5 * (1 + math.cos(math.pi * min(s, t) / t)))
    if schedule == 'warmup_cosine':
        return warmup_cosine(opt, steps, warmup=warmup, final=final)
    raise ParameterError(f'learning-rate schedule {schedule!r}: use one of '
                         f'{", ".join(SCHEDULES)} or a callable optimizer -> scheduler')


def fit(module: nn.Module, loss_fn: LossFn, data: int | GlobalBatches, *, steps: int,
        lr: float, batch: int = 256, dist: Dist | None = None, device: str = 'cpu',
        params: list[Tensor] | None = None, optimizer: str = 'adamw',
        weight_decay: float = 0.0,
        schedule: str | Scheduler | None = 'constant', final_lr: float = 0.0,
        sampling: str = 'epoch', seed: int = 0, grad_accum: int = 1,
        grad_clip: float | None = None, precision: str = 'fp32',
        checkpoint_dir: str | Path | None = None, checkpoint_every: int = 0,
        resume: str | Path | None = None, log_every: int = 1, progress: str | None = None,
        log_fn: Callable[[dict[str, float]], None] | None = None,
        before_step: Callable[[int], None] | None = None,
        trainer_state: tuple[Callable[[], dict], Callable[[dict], Any]] | None = None,
        model_state: tuple[Callable[[], dict], Callable[[dict], Any]] | None = None,
        frozen_local: bool = False, find_unused_parameters: bool = False,
        sync_buffers: bool = True) -> LoopResult:
    """Train `module` for `steps` steps of `loss_fn` on a data set; returns the loop's result.

    data:      the number of samples (batches drawn by `GlobalBatches(n, batch, dist,
               accum=grad_accum, seed=seed, mode=sampling)`), or such a sampler already made
               (a trainer that grows its data resizes it).
    params:    what the optimizer trains (default: the parameters that require gradients).
    optimizer: 'adamw' (decoupled weight decay) or 'adam' (weight decay as an L2 term); the
               same algorithm when weight_decay is 0.
    schedule:  'constant', 'cosine' (to `final_lr` x lr), 'warmup_cosine' (5 % warm-up, then
               cosine to `final_lr` x lr) or a callable optimizer -> scheduler.
    The rest goes to `TrainLoop` (see qail_ros.training.distributed).
    """
    dist = dist or setup(device)
    if params is None:
        params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ParameterError('nothing to train: the module has no parameter that requires '
                             'gradients')
    if optimizer not in OPTIMIZERS:
        raise ParameterError(f'optimizer {optimizer!r}: use one of {", ".join(OPTIMIZERS)}')
    opt = OPTIMIZERS[optimizer](params, lr=lr, weight_decay=weight_decay)
    sched = make_scheduler(opt, schedule, steps, final=final_lr)
    batches = (data if isinstance(data, GlobalBatches) else
               GlobalBatches(int(data), batch, dist, accum=grad_accum, seed=seed, mode=sampling))
    checkpointer = (Checkpointer(checkpoint_dir, checkpoint_every, dist) if checkpoint_dir
                    else None)
    loop = TrainLoop(module, opt, loss_fn, batches, steps=steps, dist=dist, scheduler=sched,
                     params=params, grad_clip=grad_clip, precision=precision,
                     checkpointer=checkpointer, resume=resume, log_every=log_every,
                     progress=progress, before_step=before_step, model_state=model_state,
                     trainer_state=trainer_state, frozen_local=frozen_local,
                     find_unused_parameters=find_unused_parameters, sync_buffers=sync_buffers,
                     log_fn=log_fn)
    return loop.run()
