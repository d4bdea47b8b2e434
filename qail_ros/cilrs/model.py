"""The CILRS network in torch (no torchvision: the BasicBlock ResNets are written here).

    model = build_model(CILRSConfig(resnet=34))        # seeded random init
    branches, speed_pred = model(image, speed)          # (N, 6, O), (N, 1)
    fused = model.fused()                               # BatchNorm folded into conv weights/bias
    macs = count_macs(model.config)                     # multiply-accumulates at batch 1

Inputs are already normalised (qail_ros.cilrs.config: ImageNet mean/std, speed / 12): the same
tensors every engine takes, so engines differ only in how they compute. All command branches
are computed (they are small MLPs) and the caller selects one (`select_branch`): this keeps
the exported graphs free of data-dependent control flow.

`fused()` gives the inference form the quantized engines start from: conv + BN -> one conv
with bias (exact up to float rounding), so W8A8 / W4A4 quantize the weights that actually run.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qail_ros.cilrs.config import CILRSConfig

__all__ = ['CILRS', 'build_model', 'count_macs', 'save_checkpoint', 'load_checkpoint',
           'fuse_batchnorm', 'CHECKPOINT_FORMAT']

CHECKPOINT_FORMAT = 'qail_ros.cilrs/1'
_LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


def _norm(channels: int, fused: bool) -> nn.Module:
    return nn.Identity() if fused else nn.BatchNorm2d(channels)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34 block)."""

    def __init__(self, cin: int, cout: int, stride: int, fused: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=fused)
        self.bn1 = _norm(cout, fused)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=fused)
        self.bn2 = _norm(cout, fused)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=fused),
                                            _norm(cout, fused))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class ResNetEncoder(nn.Module):
    """ResNet-18/34 up to the global average pool: (N, 3, H, W) -> (N, 8 * base_width)."""

    def __init__(self, depth: int, base_width: int = 64, fused: bool = False):
        super().__init__()
        w = base_width
        self.conv1 = nn.Conv2d(3, w, 7, 2, 3, bias=fused)
        self.bn1 = _norm(w, fused)
        stages, cin = [], w
        for i, blocks in enumerate(_LAYERS[depth]):
            cout = w * 2 ** i
            stage = [BasicBlock(cin, cout, 1 if i == 0 else 2, fused)]
            stage += [BasicBlock(cout, cout, 1, fused) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_features = cin

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(x, 3, 2, 1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def _mlp(sizes: list[int], final_relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if final_relu or i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class CILRS(nn.Module):
    """Image encoder + measurement MLP -> join MLP -> per-command branches; speed head."""

    def __init__(self, config: CILRSConfig):
        super().__init__()
        self.config = c = config
        self.encoder = ResNetEncoder(c.resnet, c.base_width, c.fused_bn)
        feat = self.encoder.out_features
        self.measurement = _mlp([1, *c.measurement], final_relu=True)
        self.join = _mlp([feat + c.measurement[-1], *c.join], final_relu=True)
        self.speed_head = _mlp([feat, *c.speed_head, 1], final_relu=False)
        self.branches = nn.ModuleList(
            _mlp([c.join[-1], *c.branch, c.outputs_per_branch], final_relu=False)
            for _ in range(c.num_branches))

    def forward(self, image: Tensor, speed: Tensor) -> tuple[Tensor, Tensor]:
        """image (N, 3, H, W) normalised, speed (N, 1) = m/s / speed_scale ->
        (branches (N, num_branches, outputs_per_branch), speed_pred (N, 1))."""
        feat = self.encoder(image)
        j = self.join(torch.cat([feat, self.measurement(speed)], dim=1))
        out = torch.stack([b(j) for b in self.branches], dim=1)
        if self.config.head == 'beta':
            out = F.softplus(out) + 1.0
        return out, self.speed_head(feat)

    def fused(self) -> CILRS:
        """An eval-mode copy with every BatchNorm folded into the preceding convolution."""
        return fuse_batchnorm(self)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def example_inputs(self, batch: int = 1, seed: int = 0) -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(seed)
        c = self.config
        return (torch.randn(batch, 3, c.height, c.width, generator=g),
                torch.rand(batch, 1, generator=g) * 0.8)


def build_model(config: CILRSConfig | dict | None = None, seed: int = 0, **kwargs) -> CILRS:
    """CILRS with seeded initialisation (BatchNorm statistics randomised so folding is real)."""
    if config is None:
        config = CILRSConfig(**kwargs)
    elif isinstance(config, dict):
        config = CILRSConfig.from_dict({**config, **kwargs})
    elif kwargs:
        config = CILRSConfig.from_dict({**config.to_dict(), **kwargs})
    torch.manual_seed(seed)
    model = CILRS(config)
    g = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu', generator=g)
        elif isinstance(m, nn.BatchNorm2d):
            # trained-looking statistics, so a fused model differs from an identity BN
            m.running_mean.uniform_(-0.1, 0.1, generator=g)
            m.running_var.uniform_(0.5, 1.5, generator=g)
            m.weight.data.uniform_(0.3, 0.7, generator=g)
            m.bias.data.uniform_(-0.1, 0.1, generator=g)
    return model.eval()


@torch.no_grad()
def fuse_batchnorm(model: CILRS) -> CILRS:
    """Eval-mode copy of `model` with BN folded: w' = w * g / sqrt(v + eps), b' = b - m * g /
    sqrt(v + eps) (+ conv bias)."""
    if model.config.fused_bn:
        return copy.deepcopy(model).eval()
    src = model.eval()
    fused = CILRS(CILRSConfig.from_dict({**model.config.to_dict(), 'fused_bn': True})).eval()
    state = {}
    modules = dict(src.named_modules())
    for name, m in src.named_modules():
        if not isinstance(m, nn.Conv2d):
            continue
        bn = modules[_bn_name(name)]
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        state[f'{name}.weight'] = m.weight * scale.reshape(-1, 1, 1, 1)
        bias = m.bias if m.bias is not None else torch.zeros_like(bn.running_mean)
        state[f'{name}.bias'] = (bias - bn.running_mean) * scale + bn.bias
    for k, v in src.state_dict().items():
        if k.startswith(('measurement.', 'join.', 'speed_head.', 'branches.')):
            state[k] = v
    fused.load_state_dict(state, strict=True)
    return fused


def _bn_name(conv_name: str) -> str:
    """The BatchNorm that follows a conv: conv1 -> bn1, downsample.0 -> downsample.1."""
    head, _, last = conv_name.rpartition('.')
    prefix = head + '.' if head else ''
    if last.startswith('conv'):
        return prefix + 'bn' + last[4:]
    return prefix + str(int(last) + 1)


def count_macs(config: CILRSConfig) -> dict[str, float]:
    """Multiply-accumulates of one forward at batch 1 (conv + linear), on the meta device.

    Returns {'macs', 'gmacs', 'gflops' (= 2 * MACs), 'encoder_gmacs', 'params'}.
    """
    with torch.device('meta'):
        model = CILRS(config)
    counts = {'conv': 0, 'linear': 0}

    def conv_hook(m, _inp, out):
        k = m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
        counts['conv'] += out.numel() * k

    def linear_hook(m, _inp, out):
        counts['linear'] += out.numel() * m.in_features

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(conv_hook)
        elif isinstance(m, nn.Linear):
            m.register_forward_hook(linear_hook)
    image = torch.empty(1, 3, config.height, config.width, device='meta')
    model(image, torch.empty(1, 1, device='meta'))
    macs = counts['conv'] + counts['linear']
    return {'macs': macs, 'gmacs': macs / 1e9, 'gflops': 2 * macs / 1e9,
            'encoder_gmacs': counts['conv'] / 1e9,
            'params': sum(p.numel() for p in model.parameters())}


def save_checkpoint(model: CILRS, path: str | Path) -> Path:
    """safetensors with the config in the header (what engine builders take as the source)."""
    from safetensors.torch import save_file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={'format': CHECKPOINT_FORMAT,
                                          'config': json.dumps(model.config.to_dict())})
    return path


def load_checkpoint(path: str | Path) -> CILRS:
    """A CILRS model from save_checkpoint's file; clear errors for other files."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from qail_ros.errors import QailRosError
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'CILRS checkpoint {path} does not exist')
    try:
        with safe_open(str(path), framework='pt') as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types
        raise QailRosError(f'{path} is not a readable safetensors file ({exc}): re-export it '
                           'with qail_ros.cilrs.model.save_checkpoint') from None
    if meta.get('format') != CHECKPOINT_FORMAT:
        raise QailRosError(f"{path} is not a CILRS checkpoint (format {meta.get('format')!r}, "
                           f'expected {CHECKPOINT_FORMAT!r})')
    model = CILRS(CILRSConfig.from_dict(json.loads(meta['config'])))
    model.load_state_dict(state)
    return model.eval()
