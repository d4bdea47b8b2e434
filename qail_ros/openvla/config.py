"""OpenVLA checkpoint configuration: what `config.json` of a Hugging Face OpenVLA directory says.

An OpenVLA checkpoint directory (openvla/openvla-7b on the Hub, or our tiny one) holds
  config.json                       model_type 'openvla': vision_backbone_id (e.g.
                                    'dinosiglip-vit-so-224px'), use_fused_vision_backbone,
                                    image_sizes, timm_model_ids, text_config (a Llama config),
                                    pad_to_multiple_of, n_action_bins, norm_stats
  model.safetensors.index.json      {'metadata': {'total_size'}, 'weight_map': {name: shard}}
  model-0000x-of-0000y.safetensors  the shards
  tokenizer.json (+ tokenizer_config.json, ...)   the Llama tokenizer

The vision towers are timm ViTs in the original; we rebuild them without timm from the specs
below (one per timm model id). A config may carry `vit_specs` (our extension, a list with one
dict per tower) to describe other sizes: the tiny test checkpoint does. Nothing here imports
torch.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from qail_ros.errors import QailRosError, check_known_keys

__all__ = ['OpenVLAError', 'ViTSpec', 'OpenVLAConfig', 'TIMM_SPECS', 'INDEX_FILE',
           'CONFIG_FILE', 'PROMPT_TEMPLATE', 'read_config', 'tower_inputs']

CONFIG_FILE = 'config.json'
INDEX_FILE = 'model.safetensors.index.json'
#: OpenVLA's prompt (Llama-2 'pure' backbone, as its README and predict_action use it).
PROMPT_TEMPLATE = 'In: What action should the robot take to {instruction}?\nOut:'

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


class OpenVLAError(QailRosError, ValueError):
    """An OpenVLA checkpoint directory that is missing files, keys or tensors."""


@dataclasses.dataclass(frozen=True)
class ViTSpec:
    """One vision tower, in timm's VisionTransformer terms (parameter names follow timm).

    class_token / reg_tokens: prefix tokens (DINOv2-reg4: 1 + 4; SigLIP: none).
    no_embed_class: pos_embed covers the patches only (DINOv2-reg); else prefix tokens too.
    layer_scale: ls1 / ls2 per block (OpenVLA renames timm's `gamma` to `scale_factor`).
    act: 'gelu' (exact erf) or 'gelu_tanh' (SigLIP). attn_pool: the MAP head's parameters
    exist in the checkpoint (SigLIP); OpenVLA never uses them, nor the final `norm`: it takes
    the patch tokens of the second-to-last block.
    """

    image_size: int
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_dim: int
    class_token: bool = False
    reg_tokens: int = 0
    no_embed_class: bool = False
    layer_scale: bool = False
    act: str = 'gelu'
    attn_pool: bool = False
    eps: float = 1e-6
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.class_token) + self.reg_tokens

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ViTSpec:
        check_known_keys(d, cls, 'vit_specs', OpenVLAError)
        d = dict(d)
        for key in ('mean', 'std'):
            if key in d:
                d[key] = tuple(float(v) for v in d[key])
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d['mean'], d['std'] = list(self.mean), list(self.std)
        return d


def _dinov2_l(size: int) -> ViTSpec:
    return ViTSpec(image_size=size, patch_size=14, embed_dim=1024, depth=24, num_heads=16,
                   mlp_dim=4096, class_token=True, reg_tokens=4, no_embed_class=True,
                   layer_scale=True, act='gelu')


def _siglip_so400m(size: int) -> ViTSpec:
    return ViTSpec(image_size=size, patch_size=14, embed_dim=1152, depth=27, num_heads=16,
                   mlp_dim=4304, act='gelu_tanh', attn_pool=True, mean=HALF, std=HALF)


#: timm model id -> builder(image size). The ids OpenVLA's configs name (fused dinosiglip and
#: the single towers); CLIP towers (quick_gelu, pre-norm) are not supported.
TIMM_SPECS = {
    'vit_large_patch14_reg4_dinov2.lvd142m': _dinov2_l,
    'vit_so400m_patch14_siglip_224': _siglip_so400m,
    'vit_so400m_patch14_siglip_384': _siglip_so400m,
}


@dataclasses.dataclass
class OpenVLAConfig:
    """The parts of an OpenVLA config.json the loader uses (the raw dict is kept in `raw`)."""

    vit_specs: list[ViTSpec]
    text_config: dict[str, Any]
    norm_stats: dict[str, Any]
    n_action_bins: int = 256
    pad_to_multiple_of: int = 64
    use_fused_vision_backbone: bool = True
    raw: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def text_vocab_size(self) -> int:
        """Embedding rows of the Llama backbone (tokenizer vocabulary + padding)."""
        return int(self.text_config['vocab_size'])

    @property
    def vocab_size(self) -> int:
        """The tokenizer's vocabulary: actions are its last n_action_bins ids (OpenVLA
        reverts the 'pad to a multiple of' added rows the same way)."""
        return self.text_vocab_size - int(self.pad_to_multiple_of)

    @property
    def vision_dim(self) -> int:
        return sum(s.embed_dim for s in self.vit_specs)

    @property
    def num_patches(self) -> int:
        return self.vit_specs[0].num_patches

    @property
    def unnorm_keys(self) -> list[str]:
        return sorted(self.norm_stats)

    def llama_config(self):
        """A transformers LlamaConfig (defaults for keys the checkpoint leaves out, as
        OpenVLA's own config does)."""
        from transformers import LlamaConfig
        kwargs = {k: v for k, v in self.text_config.items()
                  if k not in ('model_type', 'architectures', 'torch_dtype', 'dtype',
                               '_name_or_path', 'transformers_version')}
        cfg = LlamaConfig(**kwargs)
        cfg._attn_implementation = 'sdpa'
        return cfg

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.raw)
        out.update(text_config=self.text_config, norm_stats=self.norm_stats,
                   n_action_bins=self.n_action_bins, pad_to_multiple_of=self.pad_to_multiple_of,
                   use_fused_vision_backbone=self.use_fused_vision_backbone)
        if 'vit_specs' in self.raw or not self.raw:
            out['vit_specs'] = [s.to_dict() for s in self.vit_specs]
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = 'config.json') -> OpenVLAConfig:
        missing = [k for k in ('text_config', 'norm_stats') if k not in d]
        if missing:
            raise OpenVLAError(f'{where}: missing {missing}: not an OpenVLA config (an '
                               "OpenVLA checkpoint's config.json has model_type 'openvla', "
                               'text_config and norm_stats)')
        if 'vocab_size' not in d['text_config']:
            raise OpenVLAError(f'{where}: text_config has no vocab_size')
        fused = bool(d.get('use_fused_vision_backbone', True))
        if 'vit_specs' in d:
            specs = [ViTSpec.from_dict(s) for s in d['vit_specs']]
        else:
            ids, sizes = d.get('timm_model_ids'), d.get('image_sizes')
            if not ids or not sizes:
                raise OpenVLAError(f'{where}: needs timm_model_ids and image_sizes (or '
                                   'vit_specs) to know the vision towers')
            unknown = [i for i in ids if i not in TIMM_SPECS]
            if unknown:
                raise OpenVLAError(f'{where}: vision towers {unknown} are not supported (known: '
                                   f'{sorted(TIMM_SPECS)})')
            specs = [TIMM_SPECS[i](int(s)) for i, s in zip(ids, sizes)]
        if len(specs) != (2 if fused else 1):
            raise OpenVLAError(f'{where}: use_fused_vision_backbone={fused} needs '
                               f'{2 if fused else 1} vision towers, got {len(specs)}')
        if len({s.num_patches for s in specs}) != 1:
            raise OpenVLAError(f'{where}: fused towers must give the same number of patches')
        if not d['norm_stats']:
            raise OpenVLAError(f'{where}: norm_stats is empty: no data set to un-normalise '
                               'actions with')
        return cls(vit_specs=specs, text_config=dict(d['text_config']),
                   norm_stats=d['norm_stats'], n_action_bins=int(d.get('n_action_bins', 256)),
                   pad_to_multiple_of=int(d.get('pad_to_multiple_of', 64)),
                   use_fused_vision_backbone=fused, raw=dict(d))


def read_config(path: str | Path) -> OpenVLAConfig:
    """config.json of a checkpoint directory; errors name the directory and what is missing."""
    p = Path(path)
    if not p.is_dir():
        raise OpenVLAError(f'OpenVLA model_path {str(p)!r} is not a directory. Fix: point '
                           'model_path at a checkpoint directory (config.json, '
                           f'{INDEX_FILE}, model-*.safetensors, tokenizer.json)')
    cfg = p / CONFIG_FILE
    if not cfg.is_file():
        raise OpenVLAError(f'{p}: no {CONFIG_FILE}; an OpenVLA checkpoint directory has '
                           f'config.json, {INDEX_FILE}, model-*.safetensors and tokenizer.json')
    try:
        data = json.loads(cfg.read_text())
    except json.JSONDecodeError as exc:
        raise OpenVLAError(f'{cfg}: not valid JSON ({exc})') from None
    return OpenVLAConfig.from_dict(data, where=str(cfg))


def tower_inputs(x, specs):
    """(B, 3, H, W) RGB in [0, 1] -> (B, 3 x towers, S, S): each tower's resize (bicubic,
    antialiased: Prismatic's 'resize-naive', in torch) and mean/std, stacked on channels."""
    import torch
    import torch.nn.functional as F
    parts = []
    for spec in specs:
        s = spec.image_size
        y = x if x.shape[-2:] == (s, s) else F.interpolate(
            x, size=(s, s), mode='bicubic', align_corners=False, antialias=True)
        mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
        std = torch.tensor(spec.std).view(1, 3, 1, 1)
        parts.append((y - mean) / std)
    return torch.cat(parts, dim=1)
