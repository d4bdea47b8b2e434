"""The shipped physics models: models/physics/<task>/{expert,fp_policy}.safetensors + manifest.

Per task directory:
  expert.safetensors     the expert (SAC actor or LQR gain), small
  fp_policy.safetensors  the FP MLP policy cloned from the expert (MLPPolicy format)
  manifest.json          dims, architectures, how each was obtained, measured returns
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
    from qail_ros.share import models_dir
    task_spec(task)  # validates the name
    return models_dir() / 'physics' / task


def shipped_tasks() -> list[str]:
    """Tasks with an FP policy shipped under models/physics/."""
    from qail_ros.physics.tasks import TASKS
    return [t for t in TASKS if (task_dir(t) / 'fp_policy.safetensors').is_file()]


def load_manifest(task: str) -> dict[str, Any]:
    path = task_dir(task) / 'manifest.json'
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


def load_expert(task: str, path: str | Path | None = None):
    """The task's expert as an nn.Module (obs batch tensor -> action tensor), eval mode."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    path = Path(path) if path else task_dir(task) / 'expert.safetensors'
    if not path.is_file():
        raise MissingModelError(f'no expert for physics task {task!r} at {path}: obtain one with '
                                f'scripts/physics/ (shipped: {shipped_tasks()})')
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


def load_fp_policy(task: str):
    """The task's shipped FP MLPPolicy (float32, eval mode)."""
    from qail_ros.physics.policy import load_policy
    path = task_dir(task) / 'fp_policy.safetensors'
    if not path.is_file():
        raise MissingModelError(f'no FP policy for physics task {task!r} at {path}: train it '
                                f'with scripts/physics/train_bc.py (shipped: {shipped_tasks()})')
    return load_policy(path)
