"""Closed-loop rollouts of a policy: returns, evaluation and demonstrations.

A policy is any callable mapping a float32 tensor (B, obs_dim) to actions (B, act_dim) in
[-1, 1] — an nn.Module such as MLPPolicy, a quantized copy of one, or an expert. The episodes of
one call run in lockstep, so the policy is called once per step on a batch of all running
episodes: cheap for wide MLPs (an episode its env ends early drops out of the batch). Episode i
uses environment seed `seed + i`, so results are reproducible and two policies evaluated with
the same seed face the same initial states.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from qail_ros.physics.tasks import make_env


@dataclass
class RolloutResult:
    """Per-episode returns and, when recorded, every visited (obs, action) pair."""

    returns: list[float]
    obs: np.ndarray = field(repr=False)        # (N, obs_dim) float32
    act: np.ndarray = field(repr=False)        # (N, act_dim) float32, the policy's outputs
    episode: np.ndarray = field(repr=False)    # (N,) int64, episode index 0..episodes-1

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std(self) -> float:
        return float(np.std(self.returns))


def rollout(policy: Callable, task: str, episodes: int = 1, seed: int = 0, *,
            max_steps: int | None = None, action_noise: float = 0.0, record: bool = True,
            noise_seed: int | None = None) -> RolloutResult:
    """Run `episodes` episodes of `policy` on `task` and return returns (+ pairs if `record`).

    `action_noise` adds Gaussian noise (std, in action units) to the executed action — not to the
    recorded one — e.g. to widen the state distribution of demonstrations (DART-style).
    `max_steps` truncates episodes (returns are then partial). An episode that its env ends
    early (a Gymnasium termination) stops there; the others go on, and the policy is called on
    the batch of running episodes only.
    """
    import torch

    if episodes < 1:
        raise ValueError(f'episodes must be >= 1, got {episodes}')
    envs = [make_env(task, seed + i) for i in range(episodes)]
    steps = envs[0].max_steps if max_steps is None else min(int(max_steps), envs[0].max_steps)
    rng = np.random.default_rng(seed + 7919 if noise_seed is None else noise_seed)
    obs = np.stack([e.reset() for e in envs])
    returns = np.zeros(episodes)
    running = np.ones(episodes, bool)
    obs_log: list[list[np.ndarray]] = [[] for _ in range(episodes)]
    act_log: list[list[np.ndarray]] = [[] for _ in range(episodes)]
    was_training = getattr(policy, 'training', False)
    if hasattr(policy, 'eval'):
        policy.eval()
    try:
        with torch.no_grad():
            for _ in range(steps):
                live = np.flatnonzero(running)
                if live.size == 0:
                    break
                out = policy(torch.from_numpy(np.ascontiguousarray(obs[live])))
                if isinstance(out, torch.Tensor):
                    out = out.detach().cpu().float().numpy()
                act = np.asarray(out, dtype=np.float32).reshape(live.size, -1)
                run = act
                if action_noise > 0:
                    run = np.clip(act + action_noise * rng.standard_normal(act.shape), -1, 1)
                for j, i in enumerate(live):
                    if record:
                        obs_log[i].append(obs[i].copy())
                        act_log[i].append(act[j])
                    o, r, done = envs[i].step(run[j])
                    returns[i] += r
                    obs[i] = o
                    if done:
                        running[i] = False
    finally:
        if was_training and hasattr(policy, 'train'):
            policy.train()
    if record:
        od, ad = envs[0].obs_dim, envs[0].act_dim
        o = np.concatenate([np.asarray(x, np.float32).reshape(-1, od) for x in obs_log])
        a = np.concatenate([np.asarray(x, np.float32).reshape(-1, ad) for x in act_log])
        ep = np.concatenate([np.full(len(x), i, np.int64) for i, x in enumerate(obs_log)])
    else:
        o = np.zeros((0, envs[0].obs_dim), np.float32)
        a = np.zeros((0, envs[0].act_dim), np.float32)
        ep = np.zeros(0, np.int64)
    return RolloutResult(returns=[float(r) for r in returns], obs=o, act=a, episode=ep)


def evaluate(policy: Callable, task: str, episodes: int = 10, seed: int = 0,
             max_steps: int | None = None) -> list[float]:
    """Returns of `episodes` deterministic episodes (environment seeds seed..seed+episodes-1)."""
    return rollout(policy, task, episodes, seed, max_steps=max_steps, record=False).returns


def collect_demonstrations(expert: Callable, task: str, episodes: int, seed: int = 0,
                           action_noise: float = 0.0) -> dict[str, np.ndarray]:
    """Roll out an expert and return dict(obs, act, episode, returns) as numpy arrays."""
    res = rollout(expert, task, episodes, seed, action_noise=action_noise)
    return {'obs': res.obs, 'act': res.act, 'episode': res.episode,
            'returns': np.asarray(res.returns)}


def random_policy(act_dim: int, seed: int = 0) -> Callable:
    """A uniform random policy in [-1, 1] (the baseline every policy must beat)."""
    import torch

    gen = torch.Generator().manual_seed(seed)

    def policy(obs):
        return torch.rand(obs.shape[0], act_dim, generator=gen) * 2 - 1
    return policy
