"""ConvActionRegressor: a small convolutional image policy, image (+ instruction) -> 7-DoF action.

    policy = ConvActionRegressor(ConvActionRegressorConfig(seed=0)).eval()
    action = policy.predict(frame_rgb_uint8, 'pick up the red block')   # (7,) in [-1, 1]

What it is: four stride-2 convolutions (5x5 then 3x3; 16-32-64-128 channels, GELU) over a
224x224 RGB image (resized in torch, ImageNet-normalised), a 1x1 convolution to 32 keypoint maps
and a spatial softmax that turns each map into its expected (x, y) image position (the
visuomotor-policy feature of Levine et al. 2016, also robomimic's), FiLM conditioning of those
64 coordinates on the hashed instruction (qail_ros.policies.instruction), a 2-layer MLP head and
tanh. About 0.15 M parameters, ~60 M multiply-adds per frame: milliseconds on one CPU core.

What it is not: trained, or OpenVLA. Weights come from a seeded He initialisation (the same seed
gives the same network everywhere) unless `load()` reads a safetensors file saved by `save()`.
The spatial softmax is sharp (temperature 0.1) so that even untrained keypoints follow what
moves in the image: the actions change with the scene and the instruction, as a policy's would,
but they mean nothing for a robot. It gives the orin_vla launch a real network with real tensor
work and real latency until the INT4 OpenVLA policy (the vla_policy node) replaces it.

Action layout (ACTION_LABELS): dx, dy, dz, droll, dpitch, dyaw, gripper, all in [-1, 1].
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from qail_ros.policies.instruction import ACTION_LABELS, hash_instruction

__all__ = ['ConvActionRegressorConfig', 'ConvActionRegressor', 'SpatialSoftmax',
           'ACTION_LABELS']

_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass
class ConvActionRegressorConfig:
    """Shape and initialisation of a ConvActionRegressor.

    image_size: side of the square image the network sees (inputs are resized to it).
    channels: output channels of the stride-2 convolutions (the first is 5x5, the rest 3x3).
    instruction_dim: length of the hashed instruction vector (0: no instruction input).
    keypoints: number of spatial-softmax keypoints (each gives an expected x and y).
    softmax_temperature: temperature of the spatial softmax (lower: sharper keypoints).
    hidden_dim: width of the MLP head.
    action_dim: number of action outputs (7: xyz, rpy deltas and gripper).
    seed: seed of the initialisation; the same seed gives the same weights.
    """

    image_size: int = 224
    channels: tuple[int, ...] = (16, 32, 64, 128)
    instruction_dim: int = 256
    keypoints: int = 32
    softmax_temperature: float = 0.1
    hidden_dim: int = 128
    action_dim: int = 7
    seed: int = 0

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)
        if self.image_size < 16:
            raise ValueError(f'image_size must be >= 16, not {self.image_size}')
        if not self.channels or min(self.channels) <= 0:
            raise ValueError(f'channels must be positive, got {self.channels}')
        if self.keypoints <= 0 or self.softmax_temperature <= 0:
            raise ValueError('keypoints and softmax_temperature must be > 0; got '
                             f'{self.keypoints}, {self.softmax_temperature}')
        if self.instruction_dim < 0 or self.hidden_dim <= 0 or self.action_dim <= 0:
            raise ValueError('instruction_dim must be >= 0, hidden_dim and action_dim > 0; got '
                             f'{self.instruction_dim}, {self.hidden_dim}, {self.action_dim}')


def _he(layer: nn.Module, nonlinearity: str = 'relu') -> nn.Module:
    """He (Kaiming) normal weights, zero bias: activations keep their scale through layers."""
    nn.init.kaiming_normal_(layer.weight, nonlinearity=nonlinearity)
    nn.init.zeros_(layer.bias)
    return layer


class SpatialSoftmax(nn.Module):
    """(B, K, H, W) maps -> (B, 2K): the expected (x, y) in [-1, 1] of each softmax-ed map."""

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        self.temperature = float(temperature)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        b, k, h, w = maps.shape
        attention = F.softmax(maps.flatten(2) / self.temperature, dim=-1).view(b, k, h, w)
        xs = torch.linspace(-1.0, 1.0, w, dtype=maps.dtype, device=maps.device)
        ys = torch.linspace(-1.0, 1.0, h, dtype=maps.dtype, device=maps.device)
        x = (attention.sum(dim=2) * xs).sum(dim=-1)
        y = (attention.sum(dim=3) * ys).sum(dim=-1)
        return torch.cat([x, y], dim=1)


class ConvActionRegressor(nn.Module):
    """See the module docstring. `forward` for batches, `predict` for one camera frame."""

    def __init__(self, config: ConvActionRegressorConfig | None = None):
        super().__init__()
        self.config = config = config or ConvActionRegressorConfig()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            layers: list[nn.Module] = []
            in_ch = 3
            for i, out_ch in enumerate(config.channels):
                k = 5 if i == 0 else 3
                layers += [_he(nn.Conv2d(in_ch, out_ch, k, stride=2, padding=k // 2)), nn.GELU()]
                in_ch = out_ch
            self.backbone = nn.Sequential(*layers)
            self.keypoints = _he(nn.Conv2d(in_ch, config.keypoints, 1), 'linear')
            self.spatial_softmax = SpatialSoftmax(config.softmax_temperature)
            features = 2 * config.keypoints
            self.film = None
            if config.instruction_dim:
                # unit-norm hashed instruction -> gamma, beta of std ~0.5: the instruction
                # visibly changes the action even untrained
                self.film = nn.Linear(config.instruction_dim, 2 * features)
                nn.init.normal_(self.film.weight, std=0.5)
                nn.init.zeros_(self.film.bias)
            out = nn.Linear(config.hidden_dim, config.action_dim)
            nn.init.normal_(out.weight, std=config.hidden_dim ** -0.5)
            nn.init.zeros_(out.bias)
            self.head = nn.Sequential(_he(nn.Linear(features, config.hidden_dim)), nn.GELU(), out)
        self.register_buffer('mean', torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)
        self._instruction_cache: tuple[str, torch.Tensor] | None = None

    # -- tensors ------------------------------------------------------------------------------
    def preprocess(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 RGB (H, W, 3) or (B, H, W, 3) -> normalised float (B, 3, S, S)."""
        if isinstance(frames, np.ndarray) and not frames.flags.writeable:
            frames = frames.copy()  # a read-only view of a message buffer; torch wants to own it
        x = torch.as_tensor(frames)
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[-1] != 3:
            raise ValueError(f'expected RGB frames of shape (H, W, 3) or (B, H, W, 3), got '
                             f'{tuple(x.shape)}')
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        size = self.config.image_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode='bilinear', align_corners=False,
                              antialias=True)
        return (x - self.mean) / self.std

    def forward(self, images: torch.Tensor, instruction: torch.Tensor | None = None
                ) -> torch.Tensor:
        """images (B, 3, S, S) normalised, instruction (B, D) or None -> actions (B, 7)."""
        return torch.tanh(self.head_outputs(images, instruction))

    def head_outputs(self, images: torch.Tensor, instruction: torch.Tensor | None = None
                     ) -> torch.Tensor:
        """The head's raw outputs (B, 7), before tanh (what the recorder keeps as raw outputs)."""
        features = self.spatial_softmax(self.keypoints(self.backbone(images)))
        if self.film is not None:
            if instruction is None:
                instruction = images.new_zeros(images.shape[0], self.config.instruction_dim)
            gamma, beta = self.film(instruction).chunk(2, dim=-1)
            features = features * (1.0 + gamma) + beta
        return self.head(features)

    def embed_instruction(self, text: str) -> torch.Tensor:
        """(1, D) hashed instruction, cached for the last text seen."""
        cached = self._instruction_cache
        if cached is not None and cached[0] == text:
            return cached[1]
        vec = torch.from_numpy(hash_instruction(text, max(1, self.config.instruction_dim)))
        vec = vec.unsqueeze(0)
        self._instruction_cache = (text, vec)
        return vec

    @torch.inference_mode()
    def predict(self, frame: np.ndarray, instruction: str = '') -> np.ndarray:
        """One RGB uint8 frame (H, W, 3) and an instruction -> (7,) float32 action in [-1, 1]."""
        return self.predict_with_raw(frame, instruction)[0]

    @torch.inference_mode()
    def predict_with_raw(self, frame: np.ndarray, instruction: str = ''
                         ) -> tuple[np.ndarray, np.ndarray]:
        """(action, head outputs before tanh), both (7,) float32, for one frame; the inputs
        take the network's dtype (bf16 after `.to(torch.bfloat16)`)."""
        dtype = next(self.backbone.parameters()).dtype
        emb = self.embed_instruction(instruction) if self.film is not None else None
        raw = self.head_outputs(self.preprocess(frame).to(dtype),
                                None if emb is None else emb.to(dtype))[0].float()
        return torch.tanh(raw).numpy().astype(np.float32), raw.numpy().astype(np.float32)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- files --------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Weights and config in one safetensors file."""
        from safetensors.torch import save_file
        meta = {'config': json.dumps(dataclasses.asdict(self.config)),
                'class': type(self).__name__}
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, os.fspath(path),
                  metadata=meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> 'ConvActionRegressor':
        """A network saved by `save()` (its config travels in the file)."""
        from safetensors import safe_open
        from safetensors.torch import load_file
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f'policy weights not found: {path}')
        with safe_open(path, 'pt') as f:
            meta = f.metadata() or {}
        if meta.get('class') != cls.__name__ or 'config' not in meta:
            raise ValueError(f'{path} was not saved by {cls.__name__}.save() (metadata {meta})')
        model = cls(ConvActionRegressorConfig(**json.loads(meta['config'])))
        model.load_state_dict(load_file(path))
        return model


def export_openvino(policy: ConvActionRegressor, out_dir: str | os.PathLike, *,
                    precisions: tuple[str, ...] = ('fp32', 'bf16', 'w8a8'),
                    frames: list[np.ndarray] | None = None, instruction: str = '',
                    name: str = 'conv_action_regressor', source_hash: str | None = None,
                    holdout: list[np.ndarray] | None = None) -> dict[str, 'os.PathLike']:
    """OpenVINO engines (qail_ros.engines, back end 'openvino') of the network: inputs
    'images' (1, 3, S, S) as `preprocess` makes them and 'instruction' (1, D) as
    `embed_instruction` makes it, output 'action' (1, 7) in [-1, 1]. w8a8 is NNCF INT8
    calibrated on `frames` (uint8 RGB camera frames, recorded ones for a deployed engine;
    default: 16 seeded random frames); `holdout` frames (never calibrated on) give each
    engine's accuracy against the float network in its manifest. Returns {precision: path}."""
    import hashlib

    from qail_ros.engines.openvino_export import build_openvino_engines
    cfg = policy.config
    if frames is None:
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 256, (cfg.image_size, cfg.image_size, 3), np.uint8)
                  for _ in range(16)]
    dim = max(1, cfg.instruction_dim)
    emb = (policy.embed_instruction(instruction).numpy() if policy.film is not None
           else np.zeros((1, dim), np.float32))
    feeds = [{'images': policy.preprocess(f).numpy(), 'instruction': emb} for f in frames]
    held = [{'images': policy.preprocess(f).numpy(), 'instruction': emb}
            for f in (holdout or [])]

    class _Engine(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, images, instruction):
            return self.net(images, instruction if self.net.film is not None else None)

    if source_hash is None:
        h = hashlib.sha256(json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode())
        for k, v in sorted(policy.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().contiguous().numpy().tobytes())
        source_hash = h.hexdigest()
    s = cfg.image_size
    fields = {'architecture': {'name': 'conv-action-regressor',
                               'config': dataclasses.asdict(cfg)},
              'inputs': {'images': {'shape': [1, 3, s, s], 'dtype': 'float32'},
                         'instruction': {'shape': [1, dim], 'dtype': 'float32'}},
              'outputs': {'action': {'shape': [1, cfg.action_dim], 'dtype': 'float32'}},
              'normalisation': {'images': 'RGB / 255, resized to the side, ImageNet mean/std '
                                          '(ConvActionRegressor.preprocess)',
                                'instruction': 'hash_instruction vector (embed_instruction)'}}
    return build_openvino_engines(_Engine(policy), out_dir, name, fields=fields,
                                  source_hash=source_hash, example=feeds[0],
                                  output_names=['action'], precisions=precisions,
                                  calibration=feeds if 'w8a8' in precisions else (),
                                  holdout=held)
