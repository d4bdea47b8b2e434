"""Measure the driving benchmark itself: expert and baseline metrics per layout and density,
and simulation speed with and without the camera.

    qail-ros driving measure --routes 20 [--towns highway merge roundabout] [--json out.json]

Routes are env seeds seed..seed+routes-1 (the evaluation seeds).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ['measure']

_log = logging.getLogger(__name__)


def measure(routes: int = 20, seed: int = 0, towns: Sequence[str] | None = None,
            densities: Sequence[str] | None = None,
            baselines: Sequence[str] = ('zero', 'random'), camera: Sequence[int] = (200, 88),
            log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """{'expert/TOWN/DENSITY': metrics, 'BASELINE/TOWN/regular': metrics, 'camera_steps_per_s':
    ...}: the expert on every town and density, the baselines (zero, random) at regular density,
    and the steps per second with a `camera` (W, H) image; `log` gets one line per result."""
    from qail_ros import driving
    log = log or _log.info
    towns = list(towns or driving.LAYOUTS)
    densities = list(densities or driving.DENSITIES)
    out: dict[str, Any] = {}
    for town in towns:
        for density in densities:
            m = driving.evaluate(driving.ExpertPolicy(), density, routes, seed, town)
            out[f'expert/{town}/{density}'] = m
            log(f'expert  {town:10s} {density:8s} success {m["success_rate"]:.2f} collision '
                f'{m["collision_rate"]:.2f} route {m["route_completion"]:.2f} '
                f'({m["steps_per_s"]:.0f} steps/s, no camera)')
        for name in baselines:
            policy = driving.zero_policy if name == 'zero' else driving.random_policy(seed)
            m = driving.evaluate(policy, 'regular', routes, seed, town)
            out[f'{name}/{town}/regular'] = m
            log(f'{name:7s} {town:10s} regular  success {m["success_rate"]:.2f} collision '
                f'{m["collision_rate"]:.2f} route {m["route_completion"]:.2f}')
    size = (int(camera[0]), int(camera[1]))
    r = driving.rollout(driving.ExpertPolicy(), 'regular', towns[0], episodes=2, seed=seed,
                        image_size=size, record=True)
    out['camera_steps_per_s'] = {'town': towns[0], 'image_size': list(size),
                                 'steps_per_s': r.steps_per_s}
    log(f'with a {size[0]}x{size[1]} camera: {r.steps_per_s:.0f} steps/s')
    return out
