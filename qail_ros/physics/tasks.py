"""Physics tasks as flat float32 state vectors: DeepMind Control, Gymnasium or your own env.

`make_env(task, seed)` wraps an environment so that a policy sees one float32 vector and acts
with a vector in [-1, 1] (rescaled to the environment's own action bounds). Three kinds of task
name are accepted everywhere a task is (train, eval, bench physics, export, the launches):

- `domain-task`: any DeepMind Control suite task (`dm_control.suite.ALL_TASKS`), e.g.
  `walker-stand`, `cartpole-swingup`, `ball_in_cup-catch`. The observation dict is flattened in
  the suite's own key order; every episode lasts the task's time limit (1000 steps).
- `gym:ENV_ID`: a Gymnasium environment with Box observation and action spaces, e.g.
  `gym:Pendulum-v1`, `gym:InvertedDoublePendulum-v5`. The episode length is the env's
  `spec.max_episode_steps`; an episode also ends when the env terminates it.
- `module:factory` (e.g. `my_pkg.envs:make_arm`): your own environment. `factory()` (given
  `seed=` when it takes a `seed` argument) returns a Gymnasium-style env (Box spaces, `reset`
  / `step` with the five-tuple) or a dm_control `Environment`. The module must be importable
  (installed, or on PYTHONPATH) in every process that steps the task, nodes included.

The seed fixes the task's initial-state randomness (dm_control: at construction; Gymnasium: the
first `reset(seed=...)`), so the same seed and the same actions give the same trajectory, and
episodes of one env follow each other deterministically.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import os
from dataclasses import dataclass, field
from typing import Any

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

GYM_PREFIX = 'gym:'
#: episode length of a Gymnasium env whose spec sets no time limit
DEFAULT_MAX_STEPS = 1000

TASK_HELP = ("physics task: a DeepMind Control 'domain-task' (e.g. walker-stand, "
             "cartpole-swingup), 'gym:ENV_ID' (e.g. gym:Pendulum-v1) or 'module:factory' (your "
             'own env; docs/physics.md)')


class UnknownTaskError(QailRosError, KeyError):
    """A physics task name that names no DeepMind Control task, Gymnasium env or factory."""

    def __str__(self):  # KeyError would quote the message otherwise.
        return str(self.args[0]) if self.args else ''


class PhysicsDependencyError(QailRosError, ImportError):
    """dm_control / mujoco / gymnasium are missing or at versions that do not work together."""


@dataclass(frozen=True)
class TaskSpec:
    """What a task name means: kind 'dm_control' (domain, name), 'gym' (env id) or 'module'."""

    name: str
    kind: str
    domain: str = ''       # dm_control domain; Gymnasium env id; module path
    task: str = ''         # dm_control task; factory name

    @property
    def view(self) -> str:
        """The body's name for cameras: dm_control domain, or the env id without its version."""
        if self.kind == 'dm_control':
            return self.domain
        if self.kind == 'gym':
            return self.domain.rsplit('-v', 1)[0].split('/')[-1]
        return self.task


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


def _gym():
    try:
        import gymnasium
    except ImportError as exc:
        raise PhysicsDependencyError(f'cannot import gymnasium ({exc}): pip install '
                                     'gymnasium==1.4.0') from exc
    return gymnasium


@functools.lru_cache(maxsize=256)
def resolve_task(task: str) -> TaskSpec:
    """Parse and check a task name (see the module doc); raise UnknownTaskError if it names
    nothing that can be built."""
    if not isinstance(task, str) or not task:
        raise UnknownTaskError(f'a physics task name is needed, not {task!r}: {TASK_HELP}')
    if task in TASKS:
        return TaskSpec(task, 'dm_control', *TASKS[task])
    if task.startswith(GYM_PREFIX):
        env_id = task[len(GYM_PREFIX):]
        registry = _gym().envs.registry
        if env_id not in registry:
            import difflib
            close = difflib.get_close_matches(env_id, list(registry), n=5, cutoff=0.6)
            raise UnknownTaskError(f'unknown Gymnasium env {env_id!r} in task {task!r}'
                                   + (f': did you mean {", ".join(close[:5])}?' if close else
                                      ': see gymnasium.envs.registry (MuJoCo envs need '
                                      'gymnasium[mujoco])'))
        return TaskSpec(task, 'gym', env_id)
    if ':' in task:
        module, _, factory = task.partition(':')
        if not module or not factory:
            raise UnknownTaskError(f'task {task!r}: a factory is named module:function, e.g. '
                                   'my_pkg.envs:make_env')
        return TaskSpec(task, 'module', module, factory)
    domain, sep, name = task.partition('-')
    if sep and (domain, name) in _suite().ALL_TASKS:
        return TaskSpec(task, 'dm_control', domain, name)
    raise UnknownTaskError(
        f'unknown physics task {task!r}: use a DeepMind Control domain-task (e.g. '
        f'{", ".join(TASKS)}, cartpole-swingup; see dm_control.suite.ALL_TASKS), '
        "'gym:ENV_ID' (e.g. gym:Pendulum-v1) or 'module:factory'")


def task_spec(task: str) -> tuple[str, str]:
    """(domain, task) of a DeepMind Control task; (kind, id) of another; raises
    UnknownTaskError for a name that is none of them. Validates a name cheaply."""
    spec = resolve_task(task)
    return (spec.domain, spec.task) if spec.kind == 'dm_control' else (spec.kind, spec.domain)


def check_task(task: str) -> str:
    """The task name if it is valid (see resolve_task), for argument checking."""
    resolve_task(task)
    return task


class PhysicsEnv:
    """The common face of every task: `reset() -> obs`, `step(action) -> (obs, reward, done)`.

    `obs_dim`, `act_dim`, `max_steps` (the episode's time limit), `terminated` (whether the last
    step ended the episode by the task's own rule rather than by the time limit; SAC must not
    bootstrap through it), `physics` (an object with MuJoCo `.model` / `.data`, or None) and
    `spec` (the TaskSpec).
    """

    task: str
    seed: int
    obs_dim: int
    act_dim: int
    max_steps: int
    spec: TaskSpec
    terminated: bool = False
    last_obs: np.ndarray | None = None

    def reset(self) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def step(self, action) -> tuple[np.ndarray, float, bool]:  # pragma: no cover
        raise NotImplementedError

    @property
    def physics(self):
        return None

    def _scale(self, action, low: np.ndarray, high: np.ndarray) -> np.ndarray:
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(self.act_dim), -1.0, 1.0)
        finite = np.isfinite(low) & np.isfinite(high)
        return np.where(finite, low + (a + 1.0) * 0.5 * (np.where(finite, high - low, 0.0)), a)


@dataclass
class DMControlEnv(PhysicsEnv):
    """One dm_control environment seen as flat float32 observations and actions in [-1, 1]."""

    task: str
    seed: int
    env: object  # dm_control.rl.control.Environment
    spec: TaskSpec | None = None
    terminated: bool = field(default=False, init=False)

    def __post_init__(self):
        spec = self.env.action_spec()
        self._low = np.asarray(spec.minimum, dtype=np.float64)
        self._high = np.asarray(spec.maximum, dtype=np.float64)
        self.act_dim = int(np.prod(spec.shape))
        self.obs_dim = int(sum(int(np.prod(v.shape)) for v in
                               self.env.observation_spec().values()))
        limit = getattr(self.env, '_step_limit', DEFAULT_MAX_STEPS)
        self.max_steps = int(round(limit)) if np.isfinite(limit) else DEFAULT_MAX_STEPS
        if self.spec is None:
            self.spec = TaskSpec(self.task, 'module', '', self.task)

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
        self.terminated = False
        self.last_obs = self.flatten(self.env.reset().observation)
        return self.last_obs

    def step(self, action) -> tuple[np.ndarray, float, bool]:
        """Apply an action in [-1, 1] (clipped); return (obs, reward, episode_done)."""
        ts = self.env.step(self._scale(action, self._low, self._high))
        # a suite episode ends by its time limit (discount 1); discount 0 is a real termination
        self.terminated = bool(ts.last()) and float(ts.discount or 0.0) == 0.0
        self.last_obs = self.flatten(ts.observation)
        return self.last_obs, float(ts.reward or 0.0), bool(ts.last())


class _MujocoView:
    """`.model` / `.data` of a Gymnasium MuJoCo env, shaped like dm_control's Physics for the
    cameras (raw mujoco structs)."""

    def __init__(self, unwrapped):
        self._env = unwrapped

    @property
    def model(self):
        return self._env.model

    @property
    def data(self):
        return self._env.data


class GymEnv(PhysicsEnv):
    """A Gymnasium env (Box spaces) as flat float32 observations and actions in [-1, 1]."""

    def __init__(self, task: str, seed: int, env, spec: TaskSpec):
        gym = _gym()
        Box = gym.spaces.Box
        self.task, self.seed, self.env, self.spec = task, int(seed), env, spec
        obs_space, act_space = env.observation_space, env.action_space
        if not isinstance(obs_space, Box) or not isinstance(act_space, Box):
            raise UnknownTaskError(
                f'task {task!r}: observation and action spaces must be Box (got '
                f'{type(obs_space).__name__} / {type(act_space).__name__}); wrap the env '
                '(e.g. gymnasium.wrappers.FlattenObservation) in a module:factory task')
        self.obs_dim = int(np.prod(obs_space.shape))
        self.act_dim = int(np.prod(act_space.shape))
        self._low = np.asarray(act_space.low, dtype=np.float64).ravel()
        self._high = np.asarray(act_space.high, dtype=np.float64).ravel()
        limit = getattr(getattr(env, 'spec', None), 'max_episode_steps', None)
        self.max_steps = int(limit) if limit else DEFAULT_MAX_STEPS
        self.terminated = False
        self._seeded = False
        self._steps = 0

    @property
    def physics(self):
        unwrapped = getattr(self.env, 'unwrapped', self.env)
        if hasattr(unwrapped, 'model') and hasattr(unwrapped, 'data'):
            return _MujocoView(unwrapped)
        return None

    def reset(self) -> np.ndarray:
        self.terminated, self._steps = False, 0
        if self._seeded:
            obs, _ = self.env.reset()
        else:
            obs, _ = self.env.reset(seed=self.seed)
            self.env.action_space.seed(self.seed)
            self._seeded = True
        self.last_obs = np.asarray(obs, dtype=np.float32).ravel()
        return self.last_obs

    def step(self, action) -> tuple[np.ndarray, float, bool]:
        a = self._scale(action, self._low, self._high).reshape(self.env.action_space.shape)
        obs, reward, terminated, truncated, _ = self.env.step(a.astype(
            self.env.action_space.dtype or np.float32))
        self._steps += 1
        self.terminated = bool(terminated)
        done = bool(terminated or truncated) or self._steps >= self.max_steps
        self.last_obs = np.asarray(obs, dtype=np.float32).ravel()
        return self.last_obs, float(reward), done


def _load_factory(spec: TaskSpec):
    try:
        module = importlib.import_module(spec.domain)
    except ImportError as exc:
        raise UnknownTaskError(f'task {spec.name!r}: cannot import module {spec.domain!r} '
                               f'({exc}); install it or add its directory to PYTHONPATH') from None
    factory = getattr(module, spec.task, None)
    if not callable(factory):
        raise UnknownTaskError(f'task {spec.name!r}: module {spec.domain!r} has no function '
                               f'{spec.task!r}')
    return factory


def _wrap(task: str, seed: int, env, spec: TaskSpec) -> PhysicsEnv:
    if isinstance(env, PhysicsEnv):
        return env
    if hasattr(env, 'action_spec') and hasattr(env, 'observation_spec'):
        return DMControlEnv(task=task, seed=int(seed), env=env, spec=spec)
    if hasattr(env, 'observation_space') and hasattr(env, 'action_space'):
        return GymEnv(task, seed, env, spec)
    raise UnknownTaskError(f'task {task!r}: the factory returned a {type(env).__name__}, '
                           'neither a Gymnasium env nor a dm_control Environment')


def make_env(task: str, seed: int = 0) -> PhysicsEnv:
    """Build the environment of a task; `seed` fixes its initial-state randomness."""
    spec = resolve_task(task)
    if spec.kind == 'dm_control':
        env = _suite().load(spec.domain, spec.task, task_kwargs={'random': int(seed)})
        return DMControlEnv(task=task, seed=int(seed), env=env, spec=spec)
    if spec.kind == 'gym':
        gym = _gym()
        try:
            env = gym.make(spec.domain)
        except Exception as exc:  # noqa: BLE001 - missing extras raise their own types
            raise PhysicsDependencyError(
                f'cannot make Gymnasium env {spec.domain!r} ({type(exc).__name__}: {exc}); '
                'MuJoCo envs need gymnasium[mujoco] (mujoco==3.17.0 is installed with '
                'dm-control)') from None
        return GymEnv(task, seed, env, spec)
    factory = _load_factory(spec)
    try:
        takes_seed = 'seed' in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        takes_seed = False
    env = factory(seed=int(seed)) if takes_seed else factory()
    return _wrap(task, seed, env, spec)


def episode_steps(task: str) -> int:
    """The task's episode length (time limit), from its environment's spec."""
    return make_env(task, 0).max_steps


def env_step_seconds(env: PhysicsEnv, budget_s: float = 0.5, max_steps: int = 300) -> float:
    """Seconds per step of `env` under random actions (reset at episode ends), measured for
    at most `budget_s` / `max_steps` steps: what the expected-time estimates build on."""
    import time
    rng = np.random.default_rng(0)
    env.reset()
    t0, n = time.perf_counter(), 0
    while n < max_steps and time.perf_counter() - t0 < budget_s:
        _, _, done = env.step(rng.uniform(-1, 1, env.act_dim))
        n += 1
        if done:
            env.reset()
    return (time.perf_counter() - t0) / max(n, 1)


def task_slug(task: str) -> str:
    """A file-name friendly form of a task name (gym:Pendulum-v1 -> gym_Pendulum-v1)."""
    return ''.join(c if c.isalnum() or c in '-_.' else '_' for c in task)


def describe_task(task: str) -> dict[str, Any]:
    """kind, dims and episode length of a task (builds it once)."""
    env = make_env(task, 0)
    return {'task': task, 'kind': env.spec.kind, 'obs_dim': env.obs_dim,
            'act_dim': env.act_dim, 'episode_steps': env.max_steps}
