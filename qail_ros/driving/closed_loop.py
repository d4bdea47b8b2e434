"""Closed-loop rollouts, the benchmark metrics and demonstrations on the driving envs.

Mirrors qail_ros.physics: `rollout` runs episodes in LOCKSTEP with ONE batched policy call per
step, `evaluate` returns the benchmark metrics, `collect_demonstrations` records the privileged
expert. Episode i uses env seed `seed + i` (one seed = one route: traffic, lane, roundabout exit).

A driving policy is any callable taking a batch dict
    {'image': (B, H, W, 3) uint8 RGB, 'speed': (B,) float32 m/s, 'command': (B,) int64 RoadOption}
and returning (B, 2) CILRS actions (accel, steer) in [-1, 1] (numpy or torch; torch outputs are
detached). A policy with `needs_image = False` gets 'image' None and the env skips rendering.
A privileged policy (the expert) instead has `act_privileged(envs) -> (B, 2)` and reads the
simulator state.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from qail_ros.driving.env import DrivingEnv, DrivingError, make_env

__all__ = ['ExpertPolicy', 'DrivingRollout', 'rollout', 'evaluate', 'collect_demonstrations',
           'episode_metrics', 'zero_policy', 'random_policy', 'expert_policy']


class ExpertPolicy:
    """The privileged IDM/MOBIL expert (highway-env's traffic model driving the ego car)."""

    needs_image = False

    def act_privileged(self, envs: Sequence[DrivingEnv]) -> np.ndarray:
        return np.stack([env.expert_action() for env in envs]).astype(np.float32)

    def __repr__(self) -> str:
        return 'ExpertPolicy(IDM + MOBIL, privileged)'


def expert_policy() -> ExpertPolicy:
    return ExpertPolicy()


def zero_policy(batch: dict[str, Any]) -> np.ndarray:
    """Coast straight ahead: accel 0, steer 0 (a baseline that keeps the start speed)."""
    return np.zeros((len(batch['speed']), 2), np.float32)


zero_policy.needs_image = False


def random_policy(seed: int = 0) -> Callable[[dict[str, Any]], np.ndarray]:
    """Uniform random (accel, steer) in [-1, 1] (the random baseline)."""
    rng = np.random.default_rng(seed)

    def policy(batch: dict[str, Any]) -> np.ndarray:
        return rng.uniform(-1.0, 1.0, size=(len(batch['speed']), 2)).astype(np.float32)

    policy.needs_image = False
    return policy


@dataclasses.dataclass
class DrivingRollout:
    """Steps of several episodes, episode-major (all of episode 0, then episode 1, ...)."""

    image: np.ndarray | None     # (N, H, W, 3) uint8, None when not recorded
    speed: np.ndarray            # (N,) float32 m/s
    command: np.ndarray          # (N,) int64 RoadOption
    act: np.ndarray              # (N, 2) float32: the policy's actions (before noise)
    episode: np.ndarray          # (N,) int64
    infos: list[dict[str, Any]]  # one per episode: success, collision, route_completion, ...
    steps_per_s: float           # env steps (all episodes) per wall-clock second

    @property
    def metrics(self) -> dict[str, float]:
        return episode_metrics(self.infos)


def _as_actions(out: Any, batch: int) -> np.ndarray:
    if hasattr(out, 'detach'):
        out = out.detach().float().cpu().numpy()
    arr = np.asarray(out, dtype=np.float32).reshape(batch, -1)
    if arr.shape[1] != 2:
        raise DrivingError(f'a driving policy must return (B, 2) actions (accel, steer), got '
                           f'shape {np.shape(out)}')
    return arr


def rollout(policy, density: str = 'regular', town: str = 'highway', episodes: int = 1,
            seed: int = 0, *, image_size: tuple[int, int] = (200, 88), record: bool = True,
            max_steps: int | None = None, action_noise: float = 0.0,
            noise_seed: int | None = None, view_m: float = 80.0,
            make: Callable[..., Any] | None = None) -> DrivingRollout:
    """Run `episodes` routes (env seeds seed..seed+episodes-1) in lockstep.

    `action_noise` adds N(0, sigma) to the executed action (noise injection as in CIL data
    collection); the recorded `act` is the policy's own output. `max_steps` caps every episode
    (default: each route's own time limit). `make` builds the envs (default
    qail_ros.driving.make_env; carla_adapter.make_env drives a CARLA server instead).
    """
    if episodes < 1:
        raise DrivingError(f'episodes must be >= 1, not {episodes}')
    privileged = hasattr(policy, 'act_privileged')
    needs_image = bool(getattr(policy, 'needs_image', True))
    render = needs_image or record
    make = make or make_env
    if episodes > 1 and not getattr(make, 'lockstep', True):
        # one simulator at a time (a CARLA server holds one world): episodes one after another
        parts = [rollout(policy, density, town, 1, seed + i, image_size=image_size,
                         record=record, max_steps=max_steps, action_noise=action_noise,
                         noise_seed=None if noise_seed is None else noise_seed + i,
                         view_m=view_m, make=make) for i in range(episodes)]
        return _concat(parts)
    envs = [make(density, seed + i, town, image_size, render=render, view_m=view_m)
            for i in range(episodes)]
    obs = [env.reset() for env in envs]
    rng = np.random.default_rng(seed if noise_seed is None else noise_seed)
    steps: list[list[tuple]] = [[] for _ in envs]
    active = list(range(episodes))
    was_training = getattr(policy, 'training', False)
    if hasattr(policy, 'eval'):
        policy.eval()
    n_steps = 0
    t0 = time.perf_counter()
    try:
        while active:
            if privileged:
                acts = _as_actions(policy.act_privileged([envs[i] for i in active]), len(active))
            else:
                batch = {
                    'image': (np.stack([obs[i].image for i in active]) if needs_image else None),
                    'speed': np.asarray([obs[i].speed for i in active], np.float32),
                    'command': np.asarray([obs[i].command for i in active], np.int64)}
                acts = _as_actions(_call(policy, batch), len(active))
            still = []
            for j, i in enumerate(active):
                o = obs[i]
                if record:
                    steps[i].append((o.image, o.speed, o.command, acts[j]))
                a = acts[j]
                if action_noise > 0:
                    a = a + rng.normal(0.0, action_noise, size=2).astype(np.float32)
                obs[i], done, _ = envs[i].step(np.clip(a, -1.0, 1.0))
                n_steps += 1
                if max_steps is not None and envs[i].steps >= max_steps and not done:
                    envs[i].info['timeout'] = True
                    done = True
                if not done:
                    still.append(i)
            active = still
    finally:
        if was_training and hasattr(policy, 'train'):
            policy.train()
        for env in envs:
            env.close()
    elapsed = time.perf_counter() - t0
    infos = [dict(env.info) for env in envs]
    flat = [(s, i) for i in range(episodes) for s in steps[i]]
    if record and flat:
        image = np.stack([s[0] for s, _ in flat])
        speed = np.asarray([s[1] for s, _ in flat], np.float32)
        command = np.asarray([s[2] for s, _ in flat], np.int64)
        act = np.stack([s[3] for s, _ in flat]).astype(np.float32)
        episode = np.asarray([i for _, i in flat], np.int64)
    else:
        w, h = image_size
        image = None if not record else np.zeros((0, h, w, 3), np.uint8)
        speed, command = np.zeros(0, np.float32), np.zeros(0, np.int64)
        act, episode = np.zeros((0, 2), np.float32), np.zeros(0, np.int64)
    return DrivingRollout(image=image, speed=speed, command=command, act=act, episode=episode,
                          infos=infos, steps_per_s=n_steps / max(elapsed, 1e-9))


def _concat(parts: list[DrivingRollout]) -> DrivingRollout:
    episode = np.concatenate([p.episode + i for i, p in enumerate(parts)])
    images = [p.image for p in parts if p.image is not None]
    total_steps = sum(len(p.speed) for p in parts)
    return DrivingRollout(
        image=np.concatenate(images) if images else None,
        speed=np.concatenate([p.speed for p in parts]),
        command=np.concatenate([p.command for p in parts]),
        act=np.concatenate([p.act for p in parts]), episode=episode,
        infos=[i for p in parts for i in p.infos],
        steps_per_s=(total_steps / sum(len(p.speed) / max(p.steps_per_s, 1e-9) for p in parts)
                     if total_steps else 0.0))


def _call(policy, batch):
    try:
        import torch
    except ImportError:
        return policy(batch)
    with torch.no_grad():
        return policy(batch)


def episode_metrics(infos: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Benchmark metrics of finished episodes (each info: success, collision, route_completion,
    off_road, off_route, timeout): rates in [0, 1], route completion averaged over episodes."""
    n = len(infos)
    if n == 0:
        raise DrivingError('no episodes to compute metrics on')

    def rate(key: str) -> float:
        return float(sum(bool(i.get(key, False)) for i in infos)) / n

    return {'success_rate': rate('success'), 'collision_rate': rate('collision'),
            'route_completion': float(np.mean([float(i['route_completion']) for i in infos])),
            'off_road_rate': rate('off_road'), 'off_route_rate': rate('off_route'),
            'timeout_rate': rate('timeout'), 'episodes': n}


def evaluate(policy, density: str = 'regular', routes: int = 20, seed: int = 0,
             town: str = 'highway', *, image_size: tuple[int, int] = (200, 88),
             view_m: float = 80.0, make: Callable[..., Any] | None = None
             ) -> dict[str, float]:
    """Closed-loop metrics of `policy` over `routes` routes (env seeds seed..seed+routes-1):
    success_rate, collision_rate, route_completion (+ off_road/off_route/timeout rates,
    episodes, steps_per_s)."""
    result = rollout(policy, density, town, routes, seed, image_size=image_size, record=False,
                     view_m=view_m, make=make)
    metrics = episode_metrics(result.infos)
    metrics['steps_per_s'] = result.steps_per_s
    return metrics


def collect_demonstrations(expert=None, density: str = 'regular', town: str = 'highway',
                           episodes: int = 10, seed: int = 1000, *,
                           image_size: tuple[int, int] = (200, 88), action_noise: float = 0.0,
                           view_m: float = 80.0, make: Callable[..., Any] | None = None
                           ) -> dict[str, Any]:
    """Expert demonstrations: dict(image (N,H,W,3) uint8, speed (N,) f32, command (N,) int64,
    act (N,2) f32 expert (accel, steer), episode (N,) int64, infos, metrics).

    `expert` defaults to the privileged IDM/MOBIL ExpertPolicy; seeds >= 1000 by convention
    (evaluation uses 0..). With action_noise > 0 the executed action is perturbed while the
    label stays the expert's (the recovery data CIL collects).
    """
    expert = expert or ExpertPolicy()
    result = rollout(expert, density, town, episodes, seed, image_size=image_size, record=True,
                     action_noise=action_noise, view_m=view_m, make=make)
    return {'image': result.image, 'speed': result.speed, 'command': result.command,
            'act': result.act, 'episode': result.episode, 'infos': result.infos,
            'metrics': episode_metrics(result.infos)}
