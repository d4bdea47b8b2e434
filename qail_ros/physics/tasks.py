"""The DeepMind Control tasks of the benchmark, as flat float32 state vectors.

`make_env(task, seed)` wraps a dm_control suite environment so that a policy sees one float32
vector (the suite's observation dict flattened in its own key order) and acts with a vector in
[-1, 1] (rescaled to the task's action bounds, which are [-1, 1] for every task here). The seed
fixes the task's initial-state randomness, so the same seed and the same actions give the same
trajectory.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from qail_ros.errors import QailRosError

# name -> (domain, task) in dm_control.suite; the seven tasks of the QAIL paper's Table 7.
TASKS: dict[str, tuple[str, str]] = {
    'cartpole-balance': ('cartpole', 'balance'),
    'walker-stand': ('walker', 'stand'),
    'hopper-stand': ('hopper', 'stand'),
    'cheetah-run': ('cheetah', 'run'),
    'finger-spin': ('finger', 'spin'),
    'humanoid-stand': ('humanoid', 'stand'),
    'humanoid-walk': ('humanoid', 'walk'),
}


class UnknownTaskError(QailRosError, KeyError):
    """A physics task name that is not one of TASKS."""

    def __str__(self):  # KeyError would quote the message otherwise.
        return str(self.args[0]) if self.args else ''


class PhysicsDependencyError(QailRosError, ImportError):
    """dm_control / mujoco are missing or at versions that do not work together."""


def task_spec(task: str) -> tuple[str, str]:
    """Return (domain, task) for a benchmark task name, or raise UnknownTaskError."""
    try:
        return TASKS[task]
    except KeyError:
        raise UnknownTaskError(
            f'unknown physics task {task!r}: use one of {", ".join(TASKS)}') from None


def _suite():
    # No rendering is needed from state; 'disable' keeps dm_control from probing X11/EGL.
    os.environ.setdefault('MUJOCO_GL', 'disable')
    try:
        from dm_control import suite
    except ImportError as exc:
        raise PhysicsDependencyError(
            f'cannot import dm_control ({exc}): pip install mujoco==3.17.0 dm-control==1.0.50 '
            '(dm-control 1.0.50 does not work with mujoco 4)') from exc
    return suite


@dataclass
class PhysicsEnv:
    """One dm_control environment seen as flat float32 observations and actions in [-1, 1]."""

    task: str
    seed: int
    env: object  # dm_control.rl.control.Environment

    def __post_init__(self):
        spec = self.env.action_spec()
        self._low = np.asarray(spec.minimum, dtype=np.float64)
        self._high = np.asarray(spec.maximum, dtype=np.float64)
        self.act_dim = int(spec.shape[0])
        self.obs_dim = int(sum(int(np.prod(v.shape)) for v in
                               self.env.observation_spec().values()))
        self.max_steps = int(round(self.env._step_limit))  # 1000 for every suite task

    @property
    def physics(self):
        """The MuJoCo physics (dm_control Physics), e.g. for model-based experts."""
        return self.env.physics

    @staticmethod
    def flatten(observation) -> np.ndarray:
        """Flatten a dm_control observation dict into one float32 vector (suite key order)."""
        return np.concatenate([np.asarray(v, dtype=np.float32).ravel()
                               for v in observation.values()])

    def reset(self) -> np.ndarray:
        return self.flatten(self.env.reset().observation)

    def step(self, action) -> tuple[np.ndarray, float, bool]:
        """Apply an action in [-1, 1] (clipped); return (obs, reward, episode_done)."""
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(self.act_dim), -1.0, 1.0)
        a = self._low + (a + 1.0) * 0.5 * (self._high - self._low)
        ts = self.env.step(a)
        return self.flatten(ts.observation), float(ts.reward or 0.0), bool(ts.last())


def make_env(task: str, seed: int = 0) -> PhysicsEnv:
    """Build the environment of a benchmark task; `seed` fixes its initial-state randomness."""
    domain, name = task_spec(task)
    env = _suite().load(domain, name, task_kwargs={'random': int(seed)})
    return PhysicsEnv(task=task, seed=int(seed), env=env)
