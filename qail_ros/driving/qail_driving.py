"""QAIL on the closed-loop driving benchmark: CILRS through the generic QAILTrainer.

The trainer holds ONE observation tensor per sample, so a driving observation (camera image,
speed, navigation command) is packed into one float row

    packed = [image RGB 0..255 flattened (H*W*3, row-major HWC) | speed m/s | command]

(`pack` / `unpack`), and `PackedCILRS` wraps a CILRS network as an nn.Module on packed rows: it
normalises the image and speed as CILRS expects, runs the network and returns the (accel, steer)
of the sample's command branch, (B, 2). That is the policy's final output: L_QAIL is the MSE to
the demonstrated action (the trainer's deterministic head) and L_QBC the L2 distance to the FP
teacher's output. The teacher is the BatchNorm-folded FP CILRS (`CILRS.fused()`), so the student
quantizes the convolution weights that actually run.

D_QAIL = D_E (the privileged expert on the training town, seeds 20000 + 1000 * seed) ∪ D_FP
(closed-loop rollouts of the FP CILRS on the training town, same seed range, labelled with the
FP policy's own actions). On-policy QBC rolls the quantized student out on the training town
(seeds 100000 + 1000 * seed + round * episodes) and returns the packed states it visited.
Evaluation routes (seeds 0..N-1) never overlap either.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from qail_ros.cilrs.model import CILRS
from qail_ros.cilrs.train import normalise, select_actions
from qail_ros.qail.config import TrainConfig
from qail_ros.qail.data import ImitationData

__all__ = ['pack', 'unpack', 'PackedCILRS', 'PackedPolicy', 'build_driving_data',
           'make_collector', 'train_driving_student', 'DATA_SEED_BASE', 'ONPOLICY_SEED_BASE']

DATA_SEED_BASE = 20_000
ONPOLICY_SEED_BASE = 100_000


def pack(image: np.ndarray | Tensor, speed: np.ndarray | Tensor,
         command: np.ndarray | Tensor) -> Tensor:
    """(B, H, W, 3) uint8 images, (B,) m/s speeds, (B,) RoadOption commands -> (B, H*W*3 + 2)
    float32 rows (pixel values unchanged, 0..255)."""
    img = torch.as_tensor(np.asarray(image) if not isinstance(image, Tensor) else image)
    b = img.shape[0]
    spd = torch.as_tensor(np.asarray(speed, dtype=np.float32)).reshape(b, 1).float()
    cmd = torch.as_tensor(np.asarray(command)).reshape(b, 1).float()
    return torch.cat([img.reshape(b, -1).float(), spd, cmd], dim=1)


def unpack(packed: Tensor, height: int, width: int) -> tuple[Tensor, Tensor, Tensor]:
    """Inverse of `pack`: (images (B, H, W, 3) float 0..255, speeds (B,), commands (B,) int64)."""
    n_img = height * width * 3
    if packed.dim() != 2 or packed.shape[1] != n_img + 2:
        raise ValueError(f'packed driving observations must be (B, {n_img + 2}) for '
                         f'{width}x{height} images, got {tuple(packed.shape)}: pack them with '
                         'qail_ros.driving.qail_driving.pack at the model\'s image size')
    image = packed[:, :n_img].reshape(-1, height, width, 3)
    return image, packed[:, n_img], packed[:, n_img + 1].round().long()


class PackedCILRS(nn.Module):
    """CILRS on packed rows -> (B, action_dim) actions of each sample's command branch."""

    def __init__(self, model: CILRS):
        super().__init__()
        self.model = model
        self.config = model.config

    def forward(self, packed: Tensor) -> Tensor:
        c = self.config
        image, speed, command = unpack(packed.float(), c.height, c.width)
        img, spd = normalise(image, speed, c)
        branches, _ = self.model(img, spd)
        return select_actions(branches, command)


class PackedPolicy:
    """A qail_ros.driving policy (batch dict -> (B, 2) actions) from a module on packed rows."""

    def __init__(self, module: nn.Module):
        self.module = module

    def eval(self) -> PackedPolicy:
        self.module.eval()
        return self

    def __call__(self, batch: dict[str, Any]) -> Tensor:
        with torch.no_grad():
            out = self.module(pack(batch['image'], batch['speed'], batch['command']))
        return out.clamp(-1.0, 1.0)


def _rollout_packed(policy, densities: Sequence[str], town: str, episodes: int, seed: int,
                    image_size: tuple[int, int], action_noise: float = 0.0,
                    max_steps: int | None = None, view_m: float = 80.0) -> tuple[Tensor, Tensor]:
    """(packed states, actions of the acting policy) of `episodes` routes per density."""
    from qail_ros.driving.closed_loop import rollout
    obs, act = [], []
    for k, density in enumerate(densities):
        r = rollout(policy, density, town, episodes, seed + 100 * k, image_size=image_size,
                    record=True, action_noise=action_noise, max_steps=max_steps, view_m=view_m)
        if len(r.speed):
            obs.append(pack(r.image, r.speed, r.command))
            act.append(torch.as_tensor(r.act).float())
    if not obs:
        return torch.zeros(0), torch.zeros(0, 2)
    return torch.cat(obs), torch.cat(act)


def build_driving_data(teacher: nn.Module, *, demos: dict[str, Any] | None = None,
                       town: str = 'highway', densities: Sequence[str] = ('regular', 'dense'),
                       expert_episodes: int = 4, fp_episodes: int = 4,
                       expert_noise_episodes: int = 0, noise: float = 0.2, seed: int = 0,
                       image_size: tuple[int, int] = (128, 56),
                       view_m: float = 80.0) -> ImitationData:
    """D_QAIL = D_E ∪ D_FP on the training town; `*_episodes` are per density.

    D_E: `demos` (a collect_demonstrations dict, e.g. the FP policy's own BC data) when given,
    else the privileged expert, clean (and `expert_noise_episodes` per density with action
    noise, labels the expert's own). D_FP: the FP teacher (a PackedCILRS) driving."""
    from qail_ros.driving.closed_loop import ExpertPolicy
    base = DATA_SEED_BASE + 1000 * seed
    if demos is not None:
        e_obs = pack(demos['image'], demos['speed'], demos['command'])
        e_act = torch.as_tensor(demos['act']).float()
    else:
        e_obs, e_act = _rollout_packed(ExpertPolicy(), densities, town, expert_episodes, base,
                                       image_size, view_m=view_m)
    if expert_noise_episodes and demos is None:
        n_obs, n_act = _rollout_packed(ExpertPolicy(), densities, town, expert_noise_episodes,
                                       base + 500, image_size, action_noise=noise,
                                       view_m=view_m)
        e_obs, e_act = torch.cat([e_obs, n_obs]), torch.cat([e_act, n_act])
    fp = None
    if fp_episodes:
        fp = _rollout_packed(PackedPolicy(teacher), densities, town, fp_episodes, base + 50,
                             image_size, view_m=view_m)
    return ImitationData.from_sources(expert=(e_obs, e_act), fp=fp)


def make_collector(*, town: str = 'highway', densities: Sequence[str] = ('regular', 'dense'),
                   episodes: int = 2, max_steps: int | None = None, seed: int = 0,
                   image_size: tuple[int, int] = (128, 56), view_m: float = 80.0
                   ) -> Callable[[nn.Module, int], Tensor]:
    """On-policy QBC: `collector(student, round)` rolls the student out for `episodes` routes per
    density of the training town and returns the packed states it visited."""
    def collector(student: nn.Module, round_index: int) -> Tensor:
        s = ONPOLICY_SEED_BASE + 1000 * seed + round_index * episodes
        obs, _ = _rollout_packed(PackedPolicy(student), densities, town, episodes, s,
                                 image_size, max_steps=max_steps, view_m=view_m)
        return obs
    return collector


def train_driving_student(teacher: nn.Module, config: TrainConfig, data: ImitationData, *,
                          town: str = 'highway', densities: Sequence[str] = ('regular', 'dense'),
                          image_size: tuple[int, int] = (128, 56), view_m: float = 80.0):
    """One QAILTrainer run on driving data (collector built from the config's on-policy
    settings when the method has a QBC term); returns the TrainResult. Runs unchanged under
    torchrun (each rank rolls out its own routes; `config.device` / `precision` /
    `grad_accum` / `checkpoint_*` / `resume` as in docs/training.md)."""
    from qail_ros.qail.trainer import QAILTrainer
    collector = None
    if config.uses_qbc and config.onpolicy_every > 0:
        collector = make_collector(town=town, densities=densities,
                                   episodes=config.onpolicy_episodes,
                                   max_steps=config.onpolicy_max_steps, seed=config.seed,
                                   image_size=image_size, view_m=view_m)
    return QAILTrainer(teacher, config, data, collector=collector).train()
