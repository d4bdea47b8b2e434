"""CILRS architecture and input/output contract, torch-free (the node and manifests use it).

The defaults follow carla-roach's CILRS student (Zhang et al. 2021, public repository
zhejz/carla-roach, agents/cilrs/): a 900x256 front camera (fov 100) normalised with the
ImageNet mean/std, speed divided by 12, ResNet-34 image features (global average pool), a
measurement MLP [128, 128] on the speed, a join MLP [512, 512, 256] on the concatenation, a
speed-prediction head on the image features and one action branch per navigation command
(6 commands; VOID maps to lane-follow). The action head predicts either (accel, steer) directly
('deterministic') or a Beta distribution per action ('beta': alpha, beta = softplus(x) + 1, the
mode is used at inference).

Commands are CARLA's RoadOption values (agents.navigation.local_planner.RoadOption):
VOID=-1, LEFT=1, RIGHT=2, STRAIGHT=3, LANEFOLLOW=4, CHANGELANELEFT=5, CHANGELANERIGHT=6;
branch index = value - 1, VOID (and anything outside 1..6) -> LANEFOLLOW.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from qail_ros.errors import check_known_keys

__all__ = ['CILRSConfig', 'COMMAND_NAMES', 'IMAGENET_MEAN', 'IMAGENET_STD', 'command_index',
           'select_branch', 'postprocess', 'beta_mode', 'preprocess_frame']

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Branch order: index i answers RoadOption value i + 1.
COMMAND_NAMES = ('LEFT', 'RIGHT', 'STRAIGHT', 'LANEFOLLOW', 'CHANGELANELEFT', 'CHANGELANERIGHT')
_LANEFOLLOW = 3


@dataclasses.dataclass
class CILRSConfig:
    """Size and input contract of a CILRS network. Every field is JSON-serialisable."""

    resnet: int = 34                       # 18 or 34 (BasicBlock ResNets)
    height: int = 256                      # camera image rows fed to the network
    width: int = 900                       # camera image columns
    base_width: int = 64                   # channels of the ResNet stem (64 = the standard one)
    measurement: tuple[int, ...] = (128, 128)
    join: tuple[int, ...] = (512, 512, 256)
    speed_head: tuple[int, ...] = (256, 256)
    branch: tuple[int, ...] = (256, 256)
    num_branches: int = 6
    head: str = 'beta'                     # 'beta' or 'deterministic'
    action_dim: int = 2                    # (accel, steer)
    speed_scale: float = 12.0              # network speed input = m/s / speed_scale
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    fused_bn: bool = False                 # BatchNorm folded into the convolutions (bias)

    def __post_init__(self):
        for name in ('measurement', 'join', 'speed_head', 'branch', 'mean', 'std'):
            setattr(self, name, tuple(getattr(self, name)))
        if self.resnet not in (18, 34):
            raise ValueError(f'resnet must be 18 or 34, not {self.resnet}')
        if self.height < 32 or self.width < 32:
            raise ValueError(f'image must be at least 32x32, not {self.width}x{self.height}')
        if self.head not in ('beta', 'deterministic'):
            raise ValueError(f"head must be 'beta' or 'deterministic', not {self.head!r}")
        if self.num_branches < 1 or self.action_dim < 1 or self.base_width < 8:
            raise ValueError('num_branches and action_dim must be >= 1 and base_width >= 8')
        if not self.join or len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError('join needs at least one layer; mean/std need 3 values (RGB)')
        if self.speed_scale <= 0:
            raise ValueError(f'speed_scale must be > 0, not {self.speed_scale}')

    @property
    def outputs_per_branch(self) -> int:
        """Raw outputs of one branch: 2 * action_dim (alpha, beta) or action_dim."""
        return 2 * self.action_dim if self.head == 'beta' else self.action_dim

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CILRSConfig:
        check_known_keys(d, cls, 'CILRS config', ValueError)
        return cls(**d)

    def input_spec(self) -> dict[str, dict[str, Any]]:
        """Engine inputs: name -> {'shape', 'dtype'} (batch 1)."""
        return {'image': {'shape': [1, 3, self.height, self.width], 'dtype': 'float32'},
                'speed': {'shape': [1, 1], 'dtype': 'float32'}}

    def output_spec(self) -> dict[str, dict[str, Any]]:
        return {'branches': {'shape': [1, self.num_branches, self.outputs_per_branch],
                             'dtype': 'float32'},
                'speed_pred': {'shape': [1, 1], 'dtype': 'float32'}}

    def normalisation(self) -> dict[str, Any]:
        return {'image': 'rgb / 255, then (x - mean) / std per channel', 'mean': list(self.mean),
                'std': list(self.std), 'speed': 'm/s / speed_scale',
                'speed_scale': self.speed_scale}


def preprocess_frame(frame: np.ndarray, speed_mps: float,
                     config: CILRSConfig) -> dict[str, np.ndarray]:
    """(H, W, 3) uint8 RGB camera frame + speed in m/s -> an engine's normalised batch-1 inputs.

    The one preprocessing of the cilrs_policy node and of closed-loop engine evaluation
    (qail_ros.driving.engine_policy), so both feed an engine the same bytes. A frame of another
    size is resized (nearest neighbour) to the engine's input size.
    """
    c = config
    h, w = frame.shape[:2]
    if (h, w) != (c.height, c.width):
        rows = (np.arange(c.height) * h // c.height)
        cols = (np.arange(c.width) * w // c.width)
        frame = frame[rows[:, None], cols[None, :]]
    mean = np.asarray(c.mean, np.float32).reshape(3, 1, 1)
    inv_std = (1.0 / np.asarray(c.std, np.float32)).reshape(3, 1, 1)
    chw = frame.transpose(2, 0, 1).astype(np.float32) * np.float32(1.0 / 255.0)
    image = ((chw - mean) * inv_std)[None]
    speed = np.asarray([[speed_mps / c.speed_scale]], np.float32)
    return {'image': np.ascontiguousarray(image, np.float32), 'speed': speed}


def command_index(command: int, num_branches: int = 6) -> int:
    """RoadOption value -> branch index (VOID and unknown values -> LANEFOLLOW)."""
    c = int(command)
    return c - 1 if 1 <= c <= num_branches else min(_LANEFOLLOW, num_branches - 1)


def select_branch(branches: np.ndarray, command: int) -> np.ndarray:
    """The raw outputs (outputs_per_branch,) of the command's branch from (1, B, O) or (B, O)."""
    b = np.asarray(branches)
    b = b.reshape(b.shape[-2], b.shape[-1])
    return b[command_index(command, b.shape[0])]


def beta_mode(alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Mode of Beta(alpha, beta) for alpha, beta > 1, in [0, 1]."""
    return (alpha - 1.0) / np.maximum(alpha + beta - 2.0, 1e-6)


def postprocess(raw: np.ndarray, head: str) -> tuple[float, float, float, np.ndarray]:
    """(throttle, steer, brake, action) from one branch's raw outputs.

    beta: raw = (alpha_1..alpha_A, beta_1..beta_A) already softplus(.) + 1; action = 2*mode - 1.
    deterministic: raw = action. action = (accel, steer) in [-1, 1]; throttle = max(accel, 0),
    brake = max(-accel, 0) (carla-roach's conversion).
    """
    raw = np.asarray(raw, dtype=np.float64).ravel()
    if head == 'beta':
        a = raw.size // 2
        action = 2.0 * beta_mode(raw[:a], raw[a:]) - 1.0
    else:
        action = raw
    action = np.clip(action, -1.0, 1.0)
    accel, steer = float(action[0]), float(action[1]) if action.size > 1 else 0.0
    if not (math.isfinite(accel) and math.isfinite(steer)):
        raise ValueError(f'non-finite action {action.tolist()} from raw outputs {raw.tolist()}')
    return max(accel, 0.0), steer, max(-accel, 0.0), action
