"""A compact soft actor-critic (Haarnoja et al. 2018) for the DeepMind Control experts.

Used once, offline, to obtain experts on a CPU (scripts/physics/train_sac.py); the shipped
artefact is only the actor (`SACActor`), whose deterministic action tanh(mean) is the expert.
Twin Q critics with Polyak-averaged targets, a tanh-squashed Gaussian actor and a learned
temperature with target entropy -act_dim; defaults follow the usual state-based DMC settings
scaled down for one CPU core (256-wide, 2-hidden-layer networks).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


def mlp(inp: int, out: int, hidden: int, layers: int) -> nn.Sequential:
    mods: list[nn.Module] = []
    width = inp
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    mods.append(nn.Linear(width, out))
    return nn.Sequential(*mods)


class SACActor(nn.Module):
    """Tanh-squashed Gaussian actor; calling it gives the deterministic action tanh(mean)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, layers: int = 2):
        super().__init__()
        self.obs_dim, self.act_dim, self.hidden, self.layers = obs_dim, act_dim, hidden, layers
        self.trunk = mlp(obs_dim, 2 * act_dim, hidden, layers)

    @property
    def config(self) -> dict[str, int]:
        return {'obs_dim': self.obs_dim, 'act_dim': self.act_dim, 'hidden': self.hidden,
                'layers': self.layers}

    def dist_params(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_std = self.trunk(obs).chunk(2, dim=-1)
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(log_std) + 1)
        return mu, log_std

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised action in (-1, 1) and its log-probability (B, 1)."""
        mu, log_std = self.dist_params(obs)
        std = log_std.exp()
        u = mu + std * torch.randn_like(mu)
        a = torch.tanh(u)
        logp = (-0.5 * ((u - mu) / std) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        # log|det d tanh(u)/du|, in the numerically stable form.
        logp = logp - (2 * (math.log(2) - u - F.softplus(-2 * u))).sum(-1)
        return a, logp.unsqueeze(-1)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dist_params(obs)[0])


class TwinQ(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, layers: int = 2):
        super().__init__()
        self.q1 = mlp(obs_dim + act_dim, 1, hidden, layers)
        self.q2 = mlp(obs_dim + act_dim, 1, hidden, layers)

    def forward(self, obs, act):
        x = torch.cat([obs, act], -1)
        return self.q1(x), self.q2(x)


class ReplayBuffer:
    def __init__(self, obs_dim: int, act_dim: int, capacity: int, seed: int = 0):
        self.obs = np.zeros((capacity, obs_dim), np.float32)
        self.act = np.zeros((capacity, act_dim), np.float32)
        self.rew = np.zeros((capacity, 1), np.float32)
        self.nxt = np.zeros((capacity, obs_dim), np.float32)
        self.notdone = np.zeros((capacity, 1), np.float32)
        self.capacity, self.size, self.ptr = capacity, 0, 0
        self.rng = np.random.default_rng(seed)

    def add(self, obs, act, rew, nxt, notdone) -> None:
        i = self.ptr
        self.obs[i], self.act[i], self.rew[i], self.nxt[i], self.notdone[i] = (
            obs, act, rew, nxt, notdone)
        self.ptr = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch: int):
        idx = self.rng.integers(0, self.size, batch)
        return tuple(torch.from_numpy(x[idx]) for x in
                     (self.obs, self.act, self.rew, self.nxt, self.notdone))


@dataclass
class SACConfig:
    hidden: int = 256
    layers: int = 2
    lr: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005
    batch: int = 256
    init_alpha: float = 0.1
    actor_every: int = 1      # actor/alpha update every N critic updates

    def __post_init__(self):
        if not 0 < self.gamma < 1 or not 0 < self.tau <= 1:
            raise ValueError(f'gamma must be in (0, 1) and tau in (0, 1], got {self.gamma}, '
                             f'{self.tau}')


class SAC:
    def __init__(self, obs_dim: int, act_dim: int, cfg: SACConfig | None = None):
        self.cfg = cfg = cfg or SACConfig()
        self.actor = SACActor(obs_dim, act_dim, cfg.hidden, cfg.layers)
        self.critic = TwinQ(obs_dim, act_dim, cfg.hidden, cfg.layers)
        self.target = TwinQ(obs_dim, act_dim, cfg.hidden, cfg.layers)
        self.target.load_state_dict(self.critic.state_dict())
        self.target.requires_grad_(False)
        self.log_alpha = torch.tensor(math.log(cfg.init_alpha), requires_grad=True)
        self.target_entropy = -float(act_dim)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=cfg.lr)
        self.updates = 0

    @torch.no_grad()
    def act(self, obs: np.ndarray, explore: bool) -> np.ndarray:
        o = torch.from_numpy(obs[None])
        a = self.actor.sample(o)[0] if explore else self.actor(o)
        return a[0].numpy()

    def update(self, buf: ReplayBuffer) -> dict[str, float]:
        cfg = self.cfg
        obs, act, rew, nxt, notdone = buf.sample(cfg.batch)
        alpha = self.log_alpha.exp().detach()
        with torch.no_grad():
            a2, logp2 = self.actor.sample(nxt)
            tq1, tq2 = self.target(nxt, a2)
            y = rew + notdone * cfg.gamma * (torch.min(tq1, tq2) - alpha * logp2)
        q1, q2 = self.critic(obs, act)
        critic_loss = F.mse_loss(q1, y) + F.mse_loss(q2, y)
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()
        out = {'critic_loss': critic_loss.item()}
        if self.updates % cfg.actor_every == 0:
            a, logp = self.actor.sample(obs)
            self.critic.requires_grad_(False)
            q = torch.min(*self.critic(obs, a))
            self.critic.requires_grad_(True)
            actor_loss = (alpha * logp - q).mean()
            self.actor_opt.zero_grad(set_to_none=True)
            actor_loss.backward()
            self.actor_opt.step()
            alpha_loss = -(self.log_alpha * (logp.detach() + self.target_entropy)).mean()
            self.alpha_opt.zero_grad(set_to_none=True)
            alpha_loss.backward()
            self.alpha_opt.step()
            out.update(actor_loss=actor_loss.item(), alpha=alpha.item(),
                       entropy=-logp.detach().mean().item())
        with torch.no_grad():
            for p, tp in zip(self.critic.parameters(), self.target.parameters()):
                tp.lerp_(p, cfg.tau)
        self.updates += 1
        return out

    def state_dict(self) -> dict:
        return {'actor': self.actor.state_dict(), 'critic': self.critic.state_dict(),
                'target': self.target.state_dict(), 'log_alpha': self.log_alpha.detach(),
                'actor_opt': self.actor_opt.state_dict(),
                'critic_opt': self.critic_opt.state_dict(),
                'alpha_opt': self.alpha_opt.state_dict(), 'updates': self.updates}

    def load_state_dict(self, sd: dict) -> None:
        self.actor.load_state_dict(sd['actor'])
        self.critic.load_state_dict(sd['critic'])
        self.target.load_state_dict(sd['target'])
        with torch.no_grad():
            self.log_alpha.copy_(sd['log_alpha'])
        self.actor_opt.load_state_dict(sd['actor_opt'])
        self.critic_opt.load_state_dict(sd['critic_opt'])
        self.alpha_opt.load_state_dict(sd['alpha_opt'])
        self.updates = sd['updates']
