"""Teacher directories: {expert,fp_policy}.safetensors + manifest.json, shipped or your own.

Per task directory (the shipped ones are models/physics/<task>/; `qail-ros train-expert -o DIR`
writes the same layout anywhere, and every command takes it as `--teacher DIR`):
  expert.safetensors     the expert (SAC actor or LQR gain), small
  fp_policy.safetensors  the FP MLP policy cloned from the expert (MLPPolicy format)
  manifest.json          task, dims, architectures, how each was obtained, measured returns
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qail_ros.errors import QailRosError
from qail_ros.physics.tasks import task_spec

EXPERT_FORMAT = 'qail_ros.physics.expert/1'


class MissingModelError(QailRosError, FileNotFoundError):
    """A physics task whose expert or FP policy has not been trained and shipped."""


def task_dir(task: str) -> Path:
    """The shipped teacher directory of a task (models/physics/<task>; may not exist)."""
    from qail_ros.physics.tasks import task_slug
    from qail_ros.share import models_dir
    task_spec(task)  # validates the name
    return models_dir() / 'physics' / task_slug(task)


def teacher_dir(task: str | None = None, teacher: str | Path | None = None) -> Path:
    """`teacher` (a directory written by qail-ros train-expert) if given, else the task's
    shipped directory; raises MissingModelError when neither has an FP policy."""
    if teacher is not None:
        path = Path(teacher)
        if path.is_file() and path.name in ('fp_policy.safetensors', 'expert.safetensors',
                                            'manifest.json'):
            path = path.parent
        if not path.is_dir():
            raise MissingModelError(f'teacher directory {path} does not exist: make one with '
                                    'qail-ros train-expert --task TASK -o DIR')
        return path
    if task is None:
        raise MissingModelError('name the task (--task) or its teacher (--teacher DIR)')
    return task_dir(task)


def teacher_task(teacher: str | Path) -> str:
    """The task a teacher directory was trained on (its manifest.json, the SAC run's settings,
    or the task named in the expert's or FP policy's metadata)."""
    path = teacher_dir(None, teacher)
    for name in ('manifest.json', 'expert_settings.json'):
        if (path / name).is_file():
            task = json.loads((path / name).read_text()).get('task')
            if task:
                return task
    from safetensors import safe_open
    for name in ('expert.safetensors', 'fp_policy.safetensors'):
        if (path / name).is_file():
            with safe_open(str(path / name), framework='pt') as f:
                md = f.metadata() or {}
            task = md.get('task') or json.loads(md.get('meta', '{}')).get('task')
            if task:
                return task
    raise MissingModelError(f'teacher directory {path} names no task (no manifest.json): pass '
                            '--task')


def shipped_tasks() -> list[str]:
    """Tasks with an FP policy shipped under models/physics/."""
    from qail_ros.physics.tasks import TASKS
    return [t for t in TASKS if (task_dir(t) / 'fp_policy.safetensors').is_file()]


def load_manifest(task: str, teacher: str | Path | None = None) -> dict[str, Any]:
    path = teacher_dir(task, teacher) / 'manifest.json'
    if not path.is_file():
        raise MissingModelError(f'no manifest for physics task {task!r} at {path}: the task has '
                                f'no shipped models yet (shipped: {shipped_tasks()})')
    return json.loads(path.read_text())


def save_expert(expert, task: str, kind: str, meta: dict | None = None,
                path: str | Path | None = None) -> Path:
    """Write an expert (SACActor or CartpoleLQR) as safetensors with its kind and config."""
    from safetensors.torch import save_file
    path = Path(path) if path else task_dir(task) / 'expert.safetensors'
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().float().contiguous() for k, v in expert.state_dict().items()}
    md = {'format': EXPERT_FORMAT, 'kind': kind, 'task': task,
          'config': json.dumps(getattr(expert, 'config', {})), 'meta': json.dumps(meta or {})}
    save_file(tensors, str(path), metadata=md)
    return path


def load_expert(task: str, path: str | Path | None = None, teacher: str | Path | None = None):
    """The task's expert as an nn.Module (obs batch tensor -> action tensor), eval mode: from
    `path`, else `teacher`/expert.safetensors, else the shipped one."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    path = Path(path) if path else teacher_dir(task, teacher) / 'expert.safetensors'
    if not path.is_file():
        raise MissingModelError(f'no expert for physics task {task!r} at {path}: train one with '
                                f'qail-ros train-expert --task {task} -o DIR and pass --teacher '
                                f'DIR (shipped: {shipped_tasks()})')
    with safe_open(str(path), framework='pt') as f:
        md = f.metadata() or {}
    if md.get('format') != EXPERT_FORMAT:
        raise MissingModelError(f'{path} is not a physics expert file (format '
                                f'{md.get("format")!r}): save it with models.save_expert')
    kind, config = md['kind'], json.loads(md.get('config', '{}'))
    if kind == 'lqr':
        from qail_ros.physics.lqr import CartpoleLQR
        module = CartpoleLQR()
    elif kind == 'sac':
        from qail_ros.physics.sac import SACActor
        module = SACActor(**config)
    else:
        raise MissingModelError(f'{path} holds an expert of unknown kind {kind!r}: '
                                'expected lqr or sac')
    module.load_state_dict(load_file(str(path)))
    module.meta = json.loads(md.get('meta', '{}'))
    return module.eval()


def load_fp_policy(task: str | None, teacher: str | Path | None = None):
    """The task's FP MLPPolicy (float32, eval mode): `teacher`/fp_policy.safetensors, else the
    shipped one."""
    from qail_ros.physics.policy import load_policy
    path = teacher_dir(task, teacher) / 'fp_policy.safetensors'
    if not path.is_file():
        raise MissingModelError(
            f'no FP policy for physics task {task!r} at {path}: train one with qail-ros '
            f'train-expert --task {task or "TASK"} -o DIR (or qail-ros train-fp --teacher DIR) '
            f'and pass --teacher DIR (shipped: {shipped_tasks()})')
    return load_policy(path)
