"""QAIL on the physics tasks of `qail_ros.physics`: data, training, saving, evaluation.

The glue between the generic trainer and the physics package, shared by `qail-ros train`,
`qail-ros eval` and `qail-ros bench physics`:

- D_QAIL for a task = D_E (rollouts of the expert: LQR or SAC) ∪ D_FP (rollouts of the FP MLP
  policy), each labelled with the acting policy's own (clean) action; both come from a teacher
  directory (`qail-ros train-expert -o DIR`, passed as `teacher_dir`) or the task's shipped one.
  The data seeds depend on the training seed and never overlap the evaluation seeds (0, 1, ...).
- The teacher is the FP policy; the student is its quantized copy.
- On-policy QBC rolls the student out in the task (environment seeds from 100000 up).
- A trained student is saved as one safetensors file (its state dict, LSQ steps included) whose
  metadata holds the task, the FP architecture and the TrainConfig, so `load_trained` can rebuild
  and re-quantize the architecture before loading the weights.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from qail_ros.errors import QailRosError
from qail_ros.qail.config import TrainConfig
from qail_ros.qail.data import ImitationData
from qail_ros.qail.trainer import QAILTrainer, TrainResult, make_student

__all__ = ['STUDENT_FORMAT', 'PolicyFileError', 'obs_groups', 'build_qail_data',
           'dataset_pairs', 'data_from_datasets', 'load_teacher', 'dataset_task',
           'make_collector', 'train_on_task', 'evaluate_policy', 'save_trained', 'load_trained',
           'load_any_policy', 'measure_costs', 'estimate_train_seconds', 'DATA_SEED_BASE',
           'ONPOLICY_SEED_BASE']

STUDENT_FORMAT = 'qail_ros.qail.student/1'
DATA_SEED_BASE = 20_000      # + 1000 * training seed: demonstrations and FP rollouts
ONPOLICY_SEED_BASE = 100_000  # + 1000 * training seed: on-policy QBC rollouts of the student


class PolicyFileError(QailRosError, ValueError):
    """A policy file that is neither an FP MLPPolicy nor a QAIL student file."""


def obs_groups(task: str) -> list[list[int]]:
    """State dimensions grouped by dm_control observation key (e.g. position, velocity); one
    group per dimension for other tasks."""
    from qail_ros.physics.tasks import make_env
    env = make_env(task)
    if not hasattr(getattr(env, 'env', None), 'observation_spec'):
        return [[i] for i in range(env.obs_dim)]
    spec = env.env.observation_spec()
    groups, start = [], 0
    for v in spec.values():
        n = int(np.prod(v.shape))
        groups.append(list(range(start, start + n)))
        start += n
    return groups


def build_qail_data(task: str, *, expert_episodes: int = 10, fp_episodes: int = 10,
                    seed: int = 0, max_steps: int | None = None, teacher: nn.Module | None = None,
                    expert_noise: float = 0.0, teacher_dir: str | Path | None = None,
                    min_states: int = 0) -> ImitationData:
    """D_QAIL = D_E ∪ D_FP for `task`, from the expert and FP policy of `teacher_dir` (default:
    the task's shipped ones; `teacher` overrides the FP policy).

    `expert_noise` (std, action units) perturbs the executed expert actions, not the labels
    (DART-style), to widen the states the demonstrations cover. `min_states`: each source
    rolls out more episodes (in batches of its episode count, on the next seeds) until it has
    at least this many states, so a task whose episodes end early (a Gymnasium termination)
    gets as much data as one whose episodes last their time limit.
    """
    from qail_ros.physics.models import load_expert, load_fp_policy
    from qail_ros.physics.closed_loop import rollout
    base = DATA_SEED_BASE + 1000 * seed

    def collect(policy, episodes: int, first: int, noise: float) -> tuple:
        obs, act, start = [], [], first
        while True:
            r = rollout(policy, task, episodes, start, max_steps=max_steps, action_noise=noise)
            obs.append(r.obs)
            act.append(r.act)
            start += episodes
            if sum(len(o) for o in obs) >= min_states or start - first >= 50 * episodes:
                return np.concatenate(obs), np.concatenate(act)

    parts: dict[str, Any] = {}
    if expert_episodes > 0:
        parts['expert'] = collect(load_expert(task, teacher=teacher_dir), expert_episodes, base,
                                  expert_noise)
    if fp_episodes > 0:
        fp = teacher if teacher is not None else load_fp_policy(task, teacher_dir)
        parts['fp'] = collect(fp, fp_episodes, base + 500, 0.0)
    return ImitationData.from_sources(**parts)


def dataset_pairs(root: str | Path, split: str = 'train') -> tuple[np.ndarray, np.ndarray]:
    """(states, actions) of one split of a data set built by `qail-ros dataset build`."""
    from qail_ros.dataset.reader import ShardedArrays
    from qail_ros.errors import ParameterError
    if split not in ('train', 'val', 'all'):
        raise ParameterError(f"split must be 'train', 'val' or 'all', not '{split}'")
    arrays = ShardedArrays(root)
    if 'observation.state' not in arrays.keys:
        raise ParameterError(f'data set {root} has no observation.state: a state policy trains '
                             'on state topics (record them: state_topics of fp_recorder, or '
                             '`state:` in the topic map)')
    episodes = arrays.manifest['episodes']
    rows = [np.arange(e['first_sample'], e['first_sample'] + e['frames']) for e in episodes
            if split == 'all' or e['split'] == split]
    index = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    if index.size == 0:
        raise ParameterError(f"data set {root} has no samples in split '{split}' (episodes: "
                             f"{len(episodes)}); use --split all or record more episodes")
    states = arrays.column('observation.state')[index].astype(np.float32)
    actions = arrays.column('action')[index].astype(np.float32)
    return states, actions


def data_from_datasets(fp: str | Path | None = None, expert: str | Path | None = None, *,
                       split: str = 'train') -> ImitationData:
    """D_QAIL from recorded data sets: FP-policy rollouts (D_FP) and/or demonstrations (D_E)."""
    parts = {}
    if fp is not None:
        parts['fp'] = dataset_pairs(fp, split)
    if expert is not None:
        parts['expert'] = dataset_pairs(expert, split)
    return ImitationData.from_sources(**parts)


def dataset_task(root: str | Path) -> str | None:
    """The physics task a data set was recorded on (its single task text), if it is one."""
    from qail_ros.dataset.reader import load_manifest
    from qail_ros.physics.tasks import resolve_task
    tasks = [t for t in load_manifest(root).get('tasks', []) if t]
    if len(tasks) != 1:
        return None
    try:
        resolve_task(tasks[0])
    except QailRosError:
        return None
    return tasks[0]


def load_teacher(path: str | Path) -> nn.Module:
    """The FP teacher: a teacher directory (qail-ros train-expert), an MLPPolicy file, or an
    fp32 'mlp' engine written by qail-ros export."""
    from qail_ros.engines.manifest import manifest_path, read_manifest
    from qail_ros.physics.policy import build_mlp, load_policy
    path = Path(path)
    if path.is_dir():
        from qail_ros.physics.models import load_fp_policy
        return load_fp_policy(None, path)
    if manifest_path(path).is_file():
        engine, manifest = read_manifest(path)
        if manifest.architecture.get('name') != 'mlp' or manifest.precision != 'fp32':
            raise PolicyFileError(f'teacher {path} is a {manifest.precision} '
                                  f"{manifest.architecture.get('name')} engine: the teacher is "
                                  'the full-precision MLP (an fp32 mlp engine or its '
                                  'MLPPolicy file)')
        from safetensors.torch import load_file
        model = build_mlp(manifest.architecture['config'])
        model.load_state_dict(load_file(str(engine)))
        model.meta = {'task': manifest.details.get('task')}
        return model.eval()
    try:
        return load_policy(path)
    except Exception as exc:  # noqa: BLE001 - PolicyFormatError or a corrupt file
        raise PolicyFileError(f'teacher {path}: {exc}') from None


def make_collector(task: str, *, episodes: int = 2, max_steps: int | None = None,
                   seed: int = 0, on_round: Callable[[nn.Module, int], None] | None = None
                   ) -> Callable[[nn.Module, int], torch.Tensor]:
    """On-policy QBC collector: round k rolls the student out on fresh environment seeds.

    `on_round(student, k)` is called first (e.g. to evaluate the student after k rounds of
    training: bench physics --curve)."""
    from qail_ros.physics.closed_loop import rollout

    def collect(student: nn.Module, k: int) -> torch.Tensor:
        if on_round is not None:
            on_round(student, k)
        r = rollout(student, task, episodes, ONPOLICY_SEED_BASE + 1000 * seed + k * episodes,
                    max_steps=max_steps)
        return torch.from_numpy(r.obs)
    return collect


def train_on_task(task: str, config: TrainConfig, *, data: ImitationData | None = None,
                  teacher: nn.Module | None = None, quantize_fn=None,
                  data_kwargs: dict[str, Any] | None = None,
                  teacher_dir: str | Path | None = None,
                  on_round: Callable[[nn.Module, int], None] | None = None) -> TrainResult:
    """Quantize the task's FP policy and fine-tune it with `config.method` (on-policy if set).

    The FP policy is `teacher`, else that of `teacher_dir`, else the task's shipped one.
    `on_round(student, k)` runs before on-policy round k (after k * onpolicy_every steps)."""
    from qail_ros.physics.models import load_fp_policy
    teacher = teacher if teacher is not None else load_fp_policy(task, teacher_dir)
    if data is None:
        data = build_qail_data(task, seed=config.seed, teacher=teacher,
                               teacher_dir=teacher_dir, **(data_kwargs or {}))
    collector = None
    if config.onpolicy_every > 0 and config.uses_qbc:
        collector = make_collector(task, episodes=config.onpolicy_episodes,
                                   max_steps=config.onpolicy_max_steps, seed=config.seed,
                                   on_round=on_round)
    trainer = QAILTrainer(teacher, config, data, collector=collector, quantize_fn=quantize_fn)
    return trainer.train()


def evaluate_policy(policy: Callable, task: str, episodes: int = 10,
                    seed: int = 0) -> list[float]:
    """Returns of `episodes` full episodes on environment seeds seed..seed+episodes-1."""
    from qail_ros.physics.closed_loop import evaluate
    return evaluate(policy, task, episodes=episodes, seed=seed)


def save_trained(result: TrainResult, path: str | Path, task: str,
                 meta: dict[str, Any] | None = None) -> Path:
    """Write the trained student (state dict; task, FP architecture, config) as safetensors."""
    from safetensors.torch import save_file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    student = result.student
    arch = getattr(student, 'config', None)
    if not isinstance(arch, dict):
        raise PolicyFileError('save_trained expects a student made from an MLPPolicy (it needs '
                              'the architecture to rebuild it)')
    tensors = {k: v.detach().cpu().contiguous() for k, v in student.state_dict().items()}
    md = {'format': STUDENT_FORMAT, 'task': task, 'architecture': json.dumps(arch),
          'train_config': result.config.to_yaml(), 'summary': json.dumps(result.summary()),
          'meta': json.dumps(meta or {})}
    save_file(tensors, str(path), metadata=md)
    return path


def load_trained(path: str | Path, quantize_fn=None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a student written by `save_trained`: MLPPolicy, re-quantized, weights loaded."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    from qail_ros.physics.policy import MLPPolicy
    path = Path(path)
    with safe_open(str(path), framework='pt') as f:
        md = f.metadata() or {}
    if md.get('format') != STUDENT_FORMAT:
        raise PolicyFileError(f'{path} is not a QAIL student file (format '
                              f'{md.get("format")!r}): write it with qail-ros train')
    arch = json.loads(md['architecture'])
    config = TrainConfig.from_yaml(md['train_config'])
    fp = MLPPolicy(**arch)
    state = load_file(str(path))
    fp.obs_mean.copy_(state['obs_mean'])
    fp.obs_std.copy_(state['obs_std'])
    calib = fp.obs_mean.unsqueeze(0) + fp.obs_std.unsqueeze(0) * torch.randn(
        max(2, min(config.calib_samples, 256)), arch['obs_dim'],
        generator=torch.Generator().manual_seed(0))
    student = make_student(fp, config, calib, quantize_fn)
    try:
        student.load_state_dict(state)
    except RuntimeError as exc:
        raise PolicyFileError(f'{path} does not match the architecture and quantization it '
                              f'names: {exc}') from exc
    info = {'format': STUDENT_FORMAT, 'task': md.get('task'), 'architecture': arch,
            'config': config.to_dict(), 'summary': json.loads(md.get('summary', '{}')),
            'meta': json.loads(md.get('meta', '{}'))}
    return student.eval(), info


def load_any_policy(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """An FP MLPPolicy file, a QAIL student file, or a directory written by `qail-ros train`."""
    from safetensors import safe_open
    path = Path(path)
    if path.is_dir():
        # a qail-ros train output, else a teacher directory (its FP policy)
        path = path / ('policy.safetensors' if (path / 'policy.safetensors').is_file()
                       or not (path / 'fp_policy.safetensors').is_file()
                       else 'fp_policy.safetensors')
    if not path.is_file():
        raise PolicyFileError(f'no policy at {path}: pass a .safetensors file, a directory '
                              'written by qail-ros train or a teacher directory')
    try:
        with safe_open(str(path), framework='pt') as f:
            fmt = (f.metadata() or {}).get('format')
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own types
        raise PolicyFileError(f'{path} is not a readable safetensors policy file ({exc}): '
                              'pass a file written by qail-ros train or save_policy') from None
    if fmt == STUDENT_FORMAT:
        return load_trained(path)
    from qail_ros.physics.policy import FORMAT, load_policy
    if fmt == FORMAT:
        policy = load_policy(path)
        meta = getattr(policy, 'meta', {}) or {}
        return policy, {'format': FORMAT, 'meta': meta, 'task': meta.get('task')}
    raise PolicyFileError(f'{path} has format {fmt!r}: expected {STUDENT_FORMAT!r} (qail-ros '
                          f'train) or {FORMAT!r} (an FP MLPPolicy)')


def measure_costs(task: str, teacher: nn.Module, config: TrainConfig) -> dict[str, float]:
    """Seconds per env step (with a policy call on a batch of 2), per training step of the
    quantized student (batch `config.batch_size`, plus its on-policy share) and per FP-policy
    step in a batched evaluation: a second or two of measurement, for the expected times."""
    import time

    from qail_ros.physics.tasks import env_step_seconds, make_env
    env = make_env(task, 0)
    env_s = env_step_seconds(env)
    x = torch.randn(max(2, config.batch_size), env.obs_dim) * teacher.obs_std + teacher.obs_mean
    with torch.random.fork_rng():
        student = make_student(teacher, config, x[:256])
        opt = torch.optim.Adam([q for q in student.parameters() if q.requires_grad], 3e-4)
        batch = torch.cat([x, x[:len(x) // 2]]) if config.uses_qbc else x
        t0, k = time.perf_counter(), 0
        while k < 20 and time.perf_counter() - t0 < 0.7:
            loss = (student(batch) - teacher(batch).detach()).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            k += 1
        step_s = (time.perf_counter() - t0) / k
        with torch.no_grad():
            t0 = time.perf_counter()
            for _ in range(20):
                student(x[:2])
            act_s = (time.perf_counter() - t0) / 20
    return {'env_s': env_s + act_s / 2, 'step_s': step_s, 'episode_steps': env.max_steps}


def estimate_train_seconds(config: TrainConfig, costs: dict[str, float], *, samples: int = 0,
                           eval_episodes: int = 0) -> float:
    """Expected seconds of one `qail-ros train` run: simulated D_QAIL episodes (`samples` env
    steps), the training steps, the on-policy rounds and the final evaluation."""
    ep = costs['episode_steps']
    sim = samples * costs['env_s']
    train = config.steps * costs['step_s'] if config.trains else 0.0
    if config.trains and config.uses_qbc and config.onpolicy_every > 0:
        rounds = 1 + (config.steps - 1) // config.onpolicy_every
        steps = config.onpolicy_max_steps or ep
        train += rounds * config.onpolicy_episodes * min(steps, ep) * costs['env_s']
    return sim + train + eval_episodes * ep * costs['env_s']
