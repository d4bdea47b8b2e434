"""Behaviour cloning of a full-precision CILRS from driving demonstrations (CIL-style).

    demos = driving.collect_demonstrations(driving.ExpertPolicy(), 'regular', 'highway', 20,
                                           seed=1000, image_size=(128, 56))
    model, history = train_bc(demos, small_config(128, 56), steps=2000)
    policy = CILRSPolicy(model)             # a qail_ros.driving policy (batch dict -> actions)
    driving.evaluate(policy, 'dense', routes=20, town='merge', image_size=(128, 56))

The loss is the CILRS one with a deterministic head: L1 between the demonstrated (accel, steer)
and the output of the branch of the sample's navigation command only (the other branches get
no gradient from that sample), plus `speed_weight` times the L1 error of the speed prediction
from the image features (CILRS's regulariser against the inertia problem). `small_config`
gives the CPU-sized network the driving benchmark trains here (ResNet-18, 16 stem channels);
checkpoints are `qail_ros.cilrs.model.save_checkpoint` files (safetensors, config in the header).
"""
from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qail_ros.cilrs.config import CILRSConfig
from qail_ros.cilrs.model import CILRS, build_model

log = logging.getLogger(__name__)

__all__ = ['small_config', 'normalise', 'branch_index', 'select_actions', 'bc_loss', 'train_bc',
           'CILRSPolicy']


def small_config(width: int = 128, height: int = 56, base_width: int = 16,
                 resnet: int = 18) -> CILRSConfig:
    """A CILRS that trains on one CPU core in minutes: ResNet-18, `base_width` stem channels,
    smaller MLPs (measurement 64-64, join 256-256, speed head 128, branches 128), a
    deterministic (accel, steer) head."""
    return CILRSConfig(resnet=resnet, height=height, width=width, base_width=base_width,
                       measurement=(64, 64), join=(256, 256), speed_head=(128,), branch=(128,),
                       head='deterministic')


def normalise(image: Tensor | np.ndarray, speed: Tensor | np.ndarray,
              config: CILRSConfig) -> tuple[Tensor, Tensor]:
    """(B, H, W, 3) RGB 0..255 (uint8 or float) and (B,) m/s -> the network inputs
    ((B, 3, H, W) ImageNet-normalised, (B, 1) speed / speed_scale)."""
    img = torch.as_tensor(image).float()
    if img.dim() != 4 or img.shape[-1] != 3:
        raise ValueError(f'images must be (B, H, W, 3), got {tuple(img.shape)}')
    if tuple(img.shape[1:3]) != (config.height, config.width):
        raise ValueError(f'images are {img.shape[2]}x{img.shape[1]} but the CILRS config wants '
                         f'{config.width}x{config.height}: render with image_size=(width, '
                         'height) of the config')
    mean = torch.tensor(config.mean, dtype=img.dtype, device=img.device).reshape(1, 3, 1, 1)
    std = torch.tensor(config.std, dtype=img.dtype, device=img.device).reshape(1, 3, 1, 1)
    img = (img.permute(0, 3, 1, 2) / 255.0 - mean) / std
    spd = torch.as_tensor(speed).float().reshape(-1, 1).to(img.device) / config.speed_scale
    return img.contiguous(), spd


def branch_index(command: Tensor | np.ndarray, num_branches: int) -> Tensor:
    """RoadOption values (B,) -> branch indices (B,) (VOID / unknown -> LANEFOLLOW), as
    qail_ros.cilrs.config.command_index does for one value."""
    c = torch.as_tensor(command).long()
    lanefollow = min(3, num_branches - 1)
    valid = (c >= 1) & (c <= num_branches)
    return torch.where(valid, c - 1, torch.full_like(c, lanefollow))


def select_actions(branches: Tensor, command: Tensor | np.ndarray) -> Tensor:
    """(B, num_branches, O) outputs and (B,) commands -> (B, O): each sample's own branch."""
    idx = branch_index(command, branches.shape[1]).to(branches.device)
    return branches[torch.arange(len(branches), device=branches.device), idx]


def bc_loss(model: CILRS, image: Tensor, speed: Tensor, command: Tensor, action: Tensor,
            speed_weight: float = 0.05) -> tuple[Tensor, dict[str, float]]:
    """Branched L1 action loss + speed_weight * L1 speed-prediction loss on normalised inputs."""
    branches, speed_pred = model(image, speed)
    act = select_actions(branches, command)
    l_act = F.l1_loss(act, action.to(act.dtype))
    l_speed = F.l1_loss(speed_pred, speed)
    loss = l_act + speed_weight * l_speed
    return loss, {'loss': float(loss.detach()), 'action': float(l_act.detach()),
                  'speed': float(l_speed.detach())}


def train_bc(demos: dict[str, Any], config: CILRSConfig, *, steps: int = 2000,
             batch_size: int = 64, lr: float = 3e-4, speed_weight: float = 0.05,
             seed: int = 0, log_every: int = 100, progress: bool = False,
             device: str = 'cpu',
             precision: str = 'fp32', grad_accum: int = 1, checkpoint_dir: str | None = None,
             checkpoint_every: int = 0, resume: str | None = None
             ) -> tuple[CILRS, list[dict[str, float]]]:
    """Train a CILRS (seeded init) by behaviour cloning on `demos` (the dict of
    qail_ros.driving.collect_demonstrations: image, speed, command, act). Adam with a cosine
    learning-rate decay; returns (the model in eval mode, loss history).

    The steps run in the one behaviour-cloning loop, `qail_ros.training.bc.fit` (progress to
    this module's logger every `log_every` steps): under torchrun `batch_size` is
    the global batch (each rank its slice; BatchNorm statistics are synchronised across ranks
    on CUDA (SyncBatchNorm), per rank on CPU), bf16 autocast, accumulation, checkpoints."""
    from qail_ros.training.bc import fit
    from qail_ros.training.distributed import setup
    image = torch.as_tensor(demos['image'])
    speed = torch.as_tensor(demos['speed']).float()
    command = torch.as_tensor(demos['command']).long()
    action = torch.as_tensor(demos['act']).float()
    n = len(image)
    if n == 0 or not (len(speed) == len(command) == len(action) == n):
        raise ValueError(f'demonstrations need equally many images, speeds, commands and '
                         f'actions (got {n}, {len(speed)}, {len(command)}, {len(action)})')
    dist = setup(device)
    model = build_model(config, seed=seed)
    # build_model randomises BN statistics (for fusion tests); a trained net starts clean
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_parameters()
            m.reset_running_stats()
    model.to(dist.device)
    module: nn.Module = model
    if dist.distributed and dist.device.type == 'cuda':
        module = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.train()
    t0 = time.perf_counter()

    def loss_fn(net, idx, step):
        img, spd = normalise(image[idx], speed[idx], config)
        branches, speed_pred = net(img.to(dist.device), spd.to(dist.device))
        act = select_actions(branches.float(), command[idx])
        l_act = F.l1_loss(act, action[idx].to(act.device))
        l_speed = F.l1_loss(speed_pred.float(), spd.to(act.device))
        return l_act + speed_weight * l_speed, {'action': l_act, 'speed': l_speed}

    def log_fn(rec):
        step = rec['step']
        if step % log_every == 0 or step == steps or step == 1:
            log.info('BC step %d/%d: loss %.4f (action %.4f, speed %.4f), %.0fs', step, steps,
                     rec['loss'], rec['action'], rec['speed'], time.perf_counter() - t0)

    run = fit(module, loss_fn, n, steps=steps, lr=lr, batch=batch_size, dist=dist,
              params=list(model.parameters()), optimizer='adam', schedule='cosine',
              final_lr=0.05, sampling='epoch', seed=seed, grad_accum=grad_accum, grad_clip=5.0,
              precision=precision, checkpoint_dir=checkpoint_dir,
              checkpoint_every=checkpoint_every, resume=resume, log_every=1,
              progress='CILRS BC' if progress else None, log_fn=log_fn,
              # the branches of commands absent from a batch get no gradient
              find_unused_parameters=True)
    history = [dict(r) for r in run.history
               if r['step'] % log_every == 0 or r['step'] == steps or r['step'] == 1]
    return module.eval(), history


class CILRSPolicy:
    """A qail_ros.driving policy from a CILRS model: normalises the batch, runs the network and
    returns each sample's command branch as (accel, steer), clipped to [-1, 1]. The head must be
    'deterministic' or 'beta' (then 2 * mode - 1)."""

    def __init__(self, model: CILRS):
        self.model = model.eval()
        self.config = model.config

    def eval(self) -> CILRSPolicy:
        self.model.eval()
        return self

    def __call__(self, batch: dict[str, Any]) -> Tensor:
        img, spd = normalise(batch['image'], batch['speed'], self.config)
        with torch.no_grad():
            branches, _ = self.model(img, spd)
        act = select_actions(branches, batch['command'])
        if self.config.head == 'beta':
            a = act.shape[1] // 2
            alpha, beta = act[:, :a], act[:, a:]
            act = 2.0 * (alpha - 1.0) / (alpha + beta - 2.0).clamp_min(1e-6) - 1.0
        return act.clamp(-1.0, 1.0)
