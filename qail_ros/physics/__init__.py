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

from qail_ros.lazy import lazy_exports
from qail_ros.physics.tasks import TASKS

__getattr__, _lazy_names = lazy_exports(__name__, {
    '.tasks': ('PhysicsEnv', 'make_env', 'task_spec'),
    '.closed_loop': ('RolloutResult', 'rollout', 'evaluate', 'collect_demonstrations',
                     'random_policy'),
    '.policy': ('MLPPolicy', 'save_policy', 'load_policy'),
    '.models': ('load_expert', 'load_fp_policy', 'load_manifest', 'shipped_tasks', 'task_dir'),
    '.lqr': ('CartpoleLQR',),
})
__all__ = ['TASKS', *_lazy_names]
