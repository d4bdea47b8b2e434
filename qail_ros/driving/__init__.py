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

from qail_ros.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    '.env': ('DrivingEnv', 'DrivingError', 'Observation', 'make_env', 'LAYOUTS', 'TRAIN_LAYOUTS',
             'UNSEEN_LAYOUTS', 'DENSITIES', 'COMMANDS', 'action_to_control', 'control_to_action'),
    '.closed_loop': ('ExpertPolicy', 'DrivingRollout', 'rollout', 'evaluate',
                     'collect_demonstrations', 'episode_metrics', 'zero_policy', 'random_policy',
                     'expert_policy'),
})
