"""The full-precision MLP policy of the physics benchmark, and its safetensors format.

`MLPPolicy` is deliberately plain — nn.Linear, nn.ReLU and a final nn.Tanh inside one
nn.Sequential (`policy.net`) — so that a quantizer can swap or wrap every nn.Linear without
knowing anything else. Observation normalisation lives in the module as buffers (`obs_mean`,
`obs_std`), applied before the first layer, so a saved policy is self-contained.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qail_ros.errors import QailRosError

FORMAT = 'qail_ros.physics.MLPPolicy/1'


class PolicyFormatError(QailRosError, ValueError):
    """A policy file that is not an MLPPolicy safetensors file or does not match its shapes."""


class MLPPolicy(nn.Module):
    """obs -> (obs - mean) / std -> [Linear, ReLU] x layers -> Linear -> tanh: actions in [-1, 1].

    `layers` counts hidden layers, each `hidden` wide (the paper: three of 2048).
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 2048, layers: int = 3):
        super().__init__()
        if obs_dim < 1 or act_dim < 1 or hidden < 1 or layers < 1:
            raise ValueError(f'MLPPolicy needs positive sizes, got obs_dim={obs_dim}, '
                             f'act_dim={act_dim}, hidden={hidden}, layers={layers}')
        self.obs_dim, self.act_dim, self.hidden, self.layers = obs_dim, act_dim, hidden, layers
        mods: list[nn.Module] = []
        width = obs_dim
        for _ in range(layers):
            mods += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        mods += [nn.Linear(width, act_dim), nn.Tanh()]
        self.net = nn.Sequential(*mods)
        self.register_buffer('obs_mean', torch.zeros(obs_dim))
        self.register_buffer('obs_std', torch.ones(obs_dim))

    @property
    def config(self) -> dict[str, int]:
        return {'obs_dim': self.obs_dim, 'act_dim': self.act_dim, 'hidden': self.hidden,
                'layers': self.layers}

    def set_normalization(self, obs, eps: float = 1e-3) -> None:
        """Set the input normalisation from a batch of observations (N, obs_dim)."""
        obs = torch.as_tensor(obs, dtype=torch.float32)
        self.obs_mean.copy_(obs.mean(0))
        self.obs_std.copy_(obs.std(0).clamp_min(eps))

    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.obs_mean) / self.obs_std

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(obs))


def build_mlp(config: dict[str, Any]) -> MLPPolicy:
    """The engines' 'mlp' architecture: an MLPPolicy from its `config` dict."""
    return MLPPolicy(**{k: int(config[k]) for k in ('obs_dim', 'act_dim', 'hidden', 'layers')})


def save_policy(policy: MLPPolicy, path: str | Path, meta: dict[str, Any] | None = None,
                dtype: torch.dtype = torch.float32) -> Path:
    """Write a policy as safetensors; `meta` (JSON-able) is stored in the file's metadata.

    `dtype=torch.float16` halves the file; buffers (normalisation) always stay float32.
    """
    from safetensors.torch import save_file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, t in policy.state_dict().items():
        t = t.detach().cpu().contiguous()
        tensors[name] = t.to(dtype) if name.startswith('net.') else t.float()
    metadata = {'format': FORMAT, 'config': json.dumps(policy.config),
                'meta': json.dumps(meta or {}), 'storage_dtype': str(dtype).split('.')[-1]}
    save_file(tensors, str(path), metadata=metadata)
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Return {'config': ..., 'meta': ...} stored in an MLPPolicy safetensors file."""
    from safetensors import safe_open
    path = Path(path)
    if not path.is_file():
        raise PolicyFormatError(f'no policy file at {path}: train one (scripts/physics/) or '
                                'check the path')
    with safe_open(str(path), framework='pt') as f:
        md = f.metadata() or {}
    if md.get('format') != FORMAT:
        raise PolicyFormatError(f'{path} is not an MLPPolicy file (format {md.get("format")!r}, '
                                f'expected {FORMAT!r}): save it with qail_ros.physics.save_policy')
    return {'config': json.loads(md['config']), 'meta': json.loads(md.get('meta', '{}'))}


def load_policy(path: str | Path) -> MLPPolicy:
    """Load a policy written by save_policy, as float32, in eval mode."""
    from safetensors.torch import load_file
    info = read_metadata(path)
    policy = MLPPolicy(**info['config'])
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    try:
        policy.load_state_dict(state)
    except RuntimeError as exc:
        raise PolicyFormatError(f'{path} does not match its own config {info["config"]}: '
                                f'{exc}') from exc
    policy.meta = info['meta']
    return policy.eval()
