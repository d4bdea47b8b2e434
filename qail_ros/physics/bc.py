"""Behaviour cloning of an MLPPolicy on (obs, action) demonstrations.

Plain regression of the expert's action (MSE on the tanh output): the experts here are
deterministic, so the MSE surrogate of -log pi(a|s) for a fixed-variance Gaussian is exact up to
constants. The observation normalisation buffers are set from the demonstrations first.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from qail_ros.physics.policy import MLPPolicy


def train_bc(obs: np.ndarray, act: np.ndarray, *, hidden: int = 256, layers: int = 3,
             steps: int = 20000, batch: int = 256, lr: float = 1e-3, weight_decay: float = 0.0,
             seed: int = 0, log_every: int = 2000, log=print) -> tuple[MLPPolicy, dict]:
    """Fit a fresh MLPPolicy to (obs, act); returns it in eval mode and a training summary.

    Adam with a cosine learning-rate decay to 0 over `steps`; batches drawn uniformly with
    replacement from a seeded generator, so the same inputs and seed give the same weights.
    """
    if len(obs) != len(act) or len(obs) == 0:
        raise ValueError(f'need as many observations as actions (> 0), got {len(obs)} and '
                         f'{len(act)}')
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.as_tensor(obs, dtype=torch.float32)
    y = torch.as_tensor(act, dtype=torch.float32).clamp(-1, 1)
    policy = MLPPolicy(x.shape[1], y.shape[1], hidden=hidden, layers=layers)
    policy.set_normalization(x)
    opt = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    policy.train()
    t0, running = time.time(), None
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(x), (batch,), generator=gen)
        loss = torch.mean((policy(x[idx]) - y[idx]) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if log and (step % log_every == 0 or step == steps):
            log(f'bc step {step}/{steps} loss {running:.3g} ({time.time() - t0:.0f} s)')
    policy.eval()
    with torch.no_grad():
        full = torch.mean((policy(x) - y) ** 2).item()
    return policy, {'steps': steps, 'batch': batch, 'lr': lr, 'final_mse': full,
                    'seconds': round(time.time() - t0, 1), 'samples': len(x)}
