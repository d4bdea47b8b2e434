"""The closed-loop driving benchmark: highway-env roads driven with CARLA-style control.

Same shape as qail_ros.physics, so QAIL's training code can use either:

    from qail_ros import driving
    env = driving.make_env('dense', seed=0, town='highway', image_size=(200, 88))
    obs = env.reset()                       # obs.image (H, W, 3) uint8, obs.speed, obs.command
    obs, done, info = env.step(env.expert_action())
    demo = driving.collect_demonstrations(driving.ExpertPolicy(), 'regular', episodes=10)
    driving.evaluate(policy, 'dense', routes=20, seed=0, town='roundabout')
    # -> dict(success_rate, collision_rate, route_completion, ...)

`carla_adapter` offers the same API on a real CARLA server (the `carla` client package).
Importing this package is cheap: highway-env / pygame load when an env is made.
See docs/driving.md.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    'DrivingEnv': 'qail_ros.driving.env',
    'DrivingError': 'qail_ros.driving.env',
    'Observation': 'qail_ros.driving.env',
    'make_env': 'qail_ros.driving.env',
    'LAYOUTS': 'qail_ros.driving.env',
    'TRAIN_LAYOUTS': 'qail_ros.driving.env',
    'UNSEEN_LAYOUTS': 'qail_ros.driving.env',
    'DENSITIES': 'qail_ros.driving.env',
    'COMMANDS': 'qail_ros.driving.env',
    'action_to_control': 'qail_ros.driving.env',
    'control_to_action': 'qail_ros.driving.env',
    'ExpertPolicy': 'qail_ros.driving.closed_loop',
    'DrivingRollout': 'qail_ros.driving.closed_loop',
    'rollout': 'qail_ros.driving.closed_loop',
    'evaluate': 'qail_ros.driving.closed_loop',
    'collect_demonstrations': 'qail_ros.driving.closed_loop',
    'episode_metrics': 'qail_ros.driving.closed_loop',
    'zero_policy': 'qail_ros.driving.closed_loop',
    'random_policy': 'qail_ros.driving.closed_loop',
    'expert_policy': 'qail_ros.driving.closed_loop',
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
