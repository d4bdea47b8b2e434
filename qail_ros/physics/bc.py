"""Behaviour cloning of an MLPPolicy on (obs, action) demonstrations.

Plain regression of the expert's action (MSE on the tanh output): the experts here are
deterministic, so the MSE surrogate of -log pi(a|s) for a fixed-variance Gaussian is exact up to
constants. The observation normalisation buffers are set from the demonstrations first.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch

from qail_ros.physics.policy import MLPPolicy

log = logging.getLogger(__name__)


def train_bc(obs: np.ndarray, act: np.ndarray, *, hidden: int = 256, layers: int = 3,
             steps: int = 20000, batch: int = 256, lr: float = 1e-3, weight_decay: float = 0.0,
             seed: int = 0, log_every: int = 2000, device: str = 'cpu',
             precision: str = 'fp32', grad_accum: int = 1, checkpoint_dir: str | None = None,
             checkpoint_every: int = 0, resume: str | None = None,
             history: list | None = None) -> tuple[MLPPolicy, dict]:
    """Fit a fresh MLPPolicy to (obs, act); returns it in eval mode and a training summary.

    Adam with a cosine learning-rate decay to 0 over `steps`; batches drawn uniformly with
    replacement from a seeded generator, so the same inputs and seed give the same weights.
    The steps run in the one behaviour-cloning loop, `qail_ros.training.bc.fit` (torchrun:
    `batch` is the global batch, each rank its slice; bf16 autocast; accumulation;
    checkpoints and resume). Progress goes to this module's logger every `log_every` steps.
    `history`: a list that receives the losses logged every `log_every` steps.
    """
    from qail_ros.training.bc import fit
    from qail_ros.training.distributed import setup
    if len(obs) != len(act) or len(obs) == 0:
        raise ValueError(f'need as many observations as actions (> 0), got {len(obs)} and '
                         f'{len(act)}')
    dist = setup(device)
    torch.manual_seed(seed)
    x = torch.as_tensor(obs, dtype=torch.float32)
    y = torch.as_tensor(act, dtype=torch.float32).clamp(-1, 1)
    policy = MLPPolicy(x.shape[1], y.shape[1], hidden=hidden, layers=layers)
    policy.set_normalization(x)
    policy.to(dist.device)
    t0 = time.time()

    def loss_fn(model, idx, step):
        out = model(x[idx].to(dist.device)).float()
        return torch.mean((out - y[idx].to(dist.device)) ** 2), {}

    def log_fn(rec):
        if rec['step'] % log_every == 0 or rec['step'] == steps:
            log.info('bc step %d/%d loss %.3g (%.0f s)', rec['step'], steps, rec['loss'],
                     time.time() - t0)

    run = fit(policy, loss_fn, len(x), steps=steps, lr=lr, batch=batch, dist=dist,
              weight_decay=weight_decay, schedule='cosine', sampling='replacement', seed=seed,
              grad_accum=grad_accum, precision=precision, checkpoint_dir=checkpoint_dir,
              checkpoint_every=checkpoint_every, resume=resume, log_every=log_every,
              log_fn=log_fn)
    if history is not None:
        history.extend(run.history)
    policy.eval()
    with torch.no_grad():
        full = torch.mean((policy(x.to(dist.device)).cpu() - y) ** 2).item()
    return policy, {'steps': steps, 'batch': batch, 'lr': lr, 'final_mse': full,
                    'seconds': round(time.time() - t0, 1), 'samples': len(x), 'world': dist.world}
