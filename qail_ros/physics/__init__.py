"""DeepMind Control tasks, their experts and the full-precision MLP policies QAIL starts from.

The physics benchmark of the QAIL paper (Table 7) runs MLP policies on DeepMind Control tasks from
state. This package holds everything below the quantizers: the environments (`make_env`), batched
closed-loop evaluation (`rollout`, `evaluate`), demonstrations (`collect_demonstrations`), the
experts obtained here once (LQR for cartpole, SAC for the others) and the FP MLP policies cloned
from them, whose weights ship under models/physics/<task>/.

Importing this package is cheap: dm_control and torch load on first use of a name that needs them
(`TASKS` needs neither).
"""
from __future__ import annotations

import importlib
from typing import Any

from qail_ros.physics.tasks import TASKS

_LAZY = {
    'PhysicsEnv': 'qail_ros.physics.tasks',
    'make_env': 'qail_ros.physics.tasks',
    'task_spec': 'qail_ros.physics.tasks',
    'RolloutResult': 'qail_ros.physics.closed_loop',
    'rollout': 'qail_ros.physics.closed_loop',
    'evaluate': 'qail_ros.physics.closed_loop',
    'collect_demonstrations': 'qail_ros.physics.closed_loop',
    'random_policy': 'qail_ros.physics.closed_loop',
    'MLPPolicy': 'qail_ros.physics.policy',
    'save_policy': 'qail_ros.physics.policy',
    'load_policy': 'qail_ros.physics.policy',
    'load_expert': 'qail_ros.physics.models',
    'load_fp_policy': 'qail_ros.physics.models',
    'load_manifest': 'qail_ros.physics.models',
    'shipped_tasks': 'qail_ros.physics.models',
    'task_dir': 'qail_ros.physics.models',
    'CartpoleLQR': 'qail_ros.physics.lqr',
}

__all__ = ['TASKS', *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
