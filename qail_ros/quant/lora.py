"""Low-rank adapters (LoRA) over frozen, quantized linear layers: QLoRA-style QAIL fine-tuning.

    quantize_(model.language_model, Int4WeightOnlyAWQ(...), calibration=...)   # frozen base
    adapters = add_lora(model.language_model, rank=32, alpha=16)               # trainable
    ... train `adapters` with the QAIL / QBC losses ...
    convert_to_integer(model.language_model)   # the base goes to the int4 kernel; adapters stay
    save_lora(model.language_model, 'adapters.safetensors'); load_lora(...)

Each wrapped layer computes `base(x) + (alpha / rank) * B(A(x))`: A (rank x in) starts Gaussian
(std 1/rank, as the SQIL code's Gaussian init), B (out x rank) starts at zero, so a freshly
wrapped model computes exactly what its base does. The base layer (a fake-quantized QuantLinear,
or after convert_to_integer its int4-kernel layer) keeps its frozen weight and quantizer: only
A and B train, in float32, and at inference the adapter adds two thin matmuls per layer
(rank 32 over a 4096-wide layer is 1.6 % of its weights). The adapters are not merged into the
INT4 weights: merging would re-quantize W + BA and lose what training taught.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from torch import Tensor, nn

from qail_ros.quant.modules_util import set_module

__all__ = ['LoRALinear', 'add_lora', 'lora_parameters', 'lora_state_dict', 'save_lora',
           'load_lora']


class LoRALinear(nn.Module):
    """`base(x) + scaling * lora_b(lora_a(x))` with a frozen `base`."""

    def __init__(self, base: nn.Module, in_features: int, out_features: int, rank: int,
                 alpha: float, *, seed: int = 0):
        super().__init__()
        if rank < 1:
            raise ValueError(f'LoRA rank must be >= 1, got {rank}')
        self.base = base
        self.in_features, self.out_features = in_features, out_features
        self.rank, self.alpha = int(rank), float(alpha)
        self.scaling = self.alpha / self.rank
        self.lora_a = nn.Parameter(torch.empty(self.rank, in_features))
        self.lora_b = nn.Parameter(torch.zeros(out_features, self.rank))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.lora_a.normal_(0.0, 1.0 / self.rank, generator=g)
        for p in base.parameters():
            p.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        y = self.base(x)
        delta = (x.to(self.lora_a.dtype) @ self.lora_a.t()) @ self.lora_b.t()
        return y + (self.scaling * delta).to(y.dtype)

    def extra_repr(self) -> str:
        return f'rank={self.rank}, alpha={self.alpha}'


def _features(m: nn.Module) -> tuple[int, int] | None:
    k, n = getattr(m, 'in_features', None), getattr(m, 'out_features', None)
    return (int(k), int(n)) if isinstance(k, int) and isinstance(n, int) else None


def add_lora(model: nn.Module, *, rank: int = 32, alpha: float | None = None,
             targets: str = r'.*', exclude: tuple[str, ...] = ('lm_head',),
             seed: int = 0) -> list[nn.Parameter]:
    """Wrap every linear layer (plain, fake-quantized or integer) whose name matches `targets`
    and is not in `exclude`; freeze all other parameters of `model`; return the adapters'
    parameters. alpha defaults to min(rank, 16) (the SQIL code's choice)."""
    alpha = float(min(rank, 16) if alpha is None else alpha)
    pattern = re.compile(targets)
    chosen = []
    for name, m in model.named_modules():
        if not name or isinstance(m, LoRALinear) or name.split('.')[-1] in ('base',):
            continue
        if any(name == e or name.endswith('.' + e) for e in exclude):
            continue
        feats = _features(m)
        if feats is None or not hasattr(m, 'forward') or not pattern.fullmatch(name):
            continue
        if any(isinstance(c, nn.Module) and _features(c) for c in m.children()):
            continue        # a container that happens to carry the attributes
        chosen.append((name, m, feats))
    if not chosen:
        raise ValueError(f'no linear layer of {type(model).__name__} matches {targets!r}: '
                         'nothing to adapt')
    for p in model.parameters():
        p.requires_grad_(False)
    params: list[nn.Parameter] = []
    for i, (name, m, (k, n)) in enumerate(chosen):
        wrapped = LoRALinear(m, k, n, rank, alpha, seed=seed + i)
        set_module(model, name, wrapped)
        params += [wrapped.lora_a, wrapped.lora_b]
    return params


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for m in model.modules() if isinstance(m, LoRALinear)
            for p in (m.lora_a, m.lora_b)]


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    return {n: t.detach().contiguous() for n, t in model.state_dict().items()
            if n.endswith(('.lora_a', '.lora_b'))}


def save_lora(model: nn.Module, path: str | Path) -> Path:
    """The adapters alone (safetensors, with rank and alpha in the metadata)."""
    from safetensors.torch import save_file
    layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    if not layers:
        raise ValueError('the model has no LoRA adapters to save: call add_lora first')
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(lora_state_dict(model), str(path),
              metadata={'rank': str(layers[0].rank), 'alpha': str(layers[0].alpha)})
    return path


def load_lora(model: nn.Module, path: str | Path) -> None:
    """Load adapters saved by save_lora into a model wrapped by add_lora (same rank)."""
    from safetensors.torch import load_file
    state = load_file(str(path))
    own = lora_state_dict(model)
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        raise ValueError(f'{path}: adapters do not match the model (missing {missing[:3]}, '
                         f'unexpected {extra[:3]}): wrap the model with add_lora over the same '
                         'layers (same targets) before loading')
    for name, t in state.items():
        if own[name].shape != t.shape:
            raise ValueError(f'{path}: {name} has shape {tuple(t.shape)}, the model '
                             f'{tuple(own[name].shape)}: use the rank the adapters were '
                             'trained with')
    model.load_state_dict(state, strict=False)


def adapter_fraction(model: nn.Module) -> float:
    """Adapter parameters as a fraction of the adapted layers' weights."""
    layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    base = sum(m.in_features * m.out_features for m in layers)
    return sum(m.lora_a.numel() + m.lora_b.numel() for m in layers) / max(base, 1) \
        if layers else math.nan
