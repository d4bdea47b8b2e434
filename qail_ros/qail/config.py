"""`TrainConfig`: everything one QAIL training run needs, validated, and round-tripped to YAML.

The method decides which loss terms run (see METHODS); the other fields keep the paper's values
as defaults (lambda = 1, beta = 2, threshold at the 80th percentile of 10% of the data, Adam at
lr 3e-4 for the physics MLPs).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qail_ros.errors import QailRosError, check_known_keys

__all__ = ['METHODS', 'METHOD_ALIASES', 'TrainConfig', 'TrainConfigError', 'parse_bits']


class TrainConfigError(QailRosError, ValueError):
    """A training configuration value that is out of range or unknown."""


#: method -> (uses L_QAIL, uses L_QBC, trains at all). 'qat' is QAIL alone (quantization-aware
#: behaviour cloning on D_QAIL); 'lppd' distils the teacher's outputs on the teacher's states.
METHODS: dict[str, tuple[bool, bool, bool]] = {
    'ptq_rtn': (False, False, False),
    'qat': (True, False, True),
    'qbc': (False, True, True),
    'qail_qbc': (True, True, True),
    'qail_wqbc': (True, True, True),
    'lppd': (False, False, True),
}
#: other accepted spellings -> canonical method.
METHOD_ALIASES = {'qail': 'qat', 'qail+qbc': 'qail_qbc', 'qail+wqbc': 'qail_wqbc',
                  'rtn': 'ptq_rtn', 'ptq': 'ptq_rtn', 'sqil': 'qail_wqbc'}

#: names of the options (here, torch-free, so a node can validate a config without torch).
HEADS = ('deterministic', 'gaussian', 'categorical', 'tokens')
DISTANCES = ('l2', 'mse', 'kl')
IMAGE_PERTURBATIONS = ('blur', 'mean_patch')
STATE_PERTURBATIONS = ('shift', 'mean')
#: the weighting option of the trainer: 'none', or the one saliency weighting by either name.
WEIGHTINGS = ('none', 'wqbc', 'sis', 'qrd')

_BITS = re.compile(r'^w(\d+)a(\d+)$')


def parse_bits(bits: str) -> tuple[int, int]:
    """'w4a4' -> (4, 4); 'w4a16' / 'w4a32' mean weight-only (activations not quantized)."""
    m = _BITS.match(str(bits).lower())
    if not m:
        raise TrainConfigError(f'bits {bits!r} not understood: write wNaM, e.g. w4a4, w3a3, '
                               'w8a8, or w4a16 for weight-only')
    w, a = int(m.group(1)), int(m.group(2))
    if not (2 <= w <= 16 and 2 <= a <= 32):
        raise TrainConfigError(f'bits {bits!r} out of range: weights 2..16, activations 2..32')
    return w, a


@dataclass
class TrainConfig:
    """One training run. Every field is documented; `validate()` runs on construction."""

    #: ptq_rtn | qat (= qail) | qbc | qail_qbc | qail_wqbc | lppd (aliases in METHOD_ALIASES).
    method: str = 'qail_qbc'
    #: bit widths, 'w4a4' etc.; activations >= 16 means weight-only.
    bits: str = 'w4a4'
    #: what the policy's forward returns: deterministic | gaussian | categorical | tokens.
    head: str = 'deterministic'
    #: QBC distance: l2 (paper) | mse (SQIL's QRD) | kl (distribution heads).
    qbc_distance: str = 'l2'
    #: lambda in L = L_QAIL + lambda * L_QBC.
    lam: float = 1.0
    #: None = from the method (wqbc for qail_wqbc, else none); or none | wqbc | sis | qrd.
    weighting: str | None = None
    #: weight of the important states (paper: 2) and how they are chosen.
    beta: float = 2.0
    percentile: float = 80.0
    subset_fraction: float = 0.1
    #: saliency: state perturbation (shift | mean) and its size in data stds; image
    #: perturbation (blur | mean_patch) and grid, used when the inputs are images.
    state_perturbation: str = 'shift'
    #: optional SIS cache file (.jsonl or .safetensors): scores of D_QAIL by sample id are read
    #: from it when present and written back (rank 0) after they are computed.
    sis_cache: str | None = None
    state_scale: float = 0.5
    image_perturbation: str = 'blur'
    image_grid: int = 8
    #: optimisation: Adam.
    lr: float = 3e-4
    steps: int = 2000
    batch_size: int = 256
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    #: LPPD softmax temperature (logit heads only).
    temperature: float = 1.0
    #: on-policy QBC (needs an environment): every `onpolicy_every` steps (0 = off) roll out the
    #: student for `onpolicy_episodes` episodes of at most `onpolicy_max_steps` steps, keep at
    #: most `onpolicy_pool` states, and fill `onpolicy_fraction` of each QBC batch from them.
    onpolicy_every: int = 0
    onpolicy_episodes: int = 2
    onpolicy_max_steps: int | None = None
    onpolicy_pool: int = 50_000
    onpolicy_fraction: float = 0.5
    #: calibration samples for quantizer initialisation (LSQ steps, RTN activation ranges).
    calib_samples: int = 1024
    #: where a trained student's LSQ steps start: 'lsq' (LSQ's own 2 mean|v| / sqrt(Qp)) or
    #: 'ptq' (the per-tensor RTN max ranges: the student starts as the PTQ-RTN policy). 'lsq' is
    #: the default because it trained better here (walker-stand W4A4 QAT, 2000 steps: output
    #: gap 0.09 and return 962 vs 0.25 and 666 from the RTN ranges, whose steps are too coarse).
    student_init: str = 'lsq'
    seed: int = 0
    #: cpu | cuda | auto (cuda when there is one); under torchrun cuda means cuda:LOCAL_RANK.
    device: str = 'cpu'
    #: fp32 | bf16 (the forward under torch.autocast(bfloat16); weights and Adam stay fp32).
    precision: str = 'fp32'
    #: micro-batches per step: `batch_size` is the global batch of one optimizer step, split
    #: over the processes (torchrun) and then into `grad_accum` micro-batches.
    grad_accum: int = 1
    #: checkpoints (qail_ros.training): every `checkpoint_every` steps (0 = only when stopped by
    #: SIGTERM / SIGINT) into `checkpoint_dir` (None = none); `resume` = a checkpoint (or a
    #: directory of them) to continue from, or 'auto' (the latest in checkpoint_dir, if any).
    checkpoint_every: int = 0
    checkpoint_dir: str | None = None
    resume: str | None = None
    log_every: int = 50
    progress: bool = True
    #: free-form facts carried to the results (task name, data sizes...).
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.validate()

    # -- derived -------------------------------------------------------------------------------
    @property
    def canonical_method(self) -> str:
        return METHOD_ALIASES.get(self.method, self.method)

    @property
    def uses_qail(self) -> bool:
        return METHODS[self.canonical_method][0]

    @property
    def uses_qbc(self) -> bool:
        return METHODS[self.canonical_method][1]

    @property
    def trains(self) -> bool:
        return METHODS[self.canonical_method][2]

    @property
    def weight_bits(self) -> int:
        return parse_bits(self.bits)[0]

    @property
    def act_bits(self) -> int | None:
        a = parse_bits(self.bits)[1]
        return None if a >= 16 else a

    @property
    def resolved_weighting(self) -> str:
        if self.weighting is not None:
            return self.weighting
        return 'wqbc' if self.canonical_method == 'qail_wqbc' else 'none'

    # -- validation ----------------------------------------------------------------------------
    def validate(self) -> None:
        def bad(name, value, why):
            raise TrainConfigError(f'TrainConfig.{name}={value!r}: {why}')

        if self.canonical_method not in METHODS:
            bad('method', self.method, f'use one of {", ".join(METHODS)} (or an alias: '
                f'{", ".join(METHOD_ALIASES)})')
        parse_bits(self.bits)
        if self.head not in HEADS:
            bad('head', self.head, f'use one of {", ".join(HEADS)}')
        if self.qbc_distance not in DISTANCES:
            bad('qbc_distance', self.qbc_distance, f'use one of {", ".join(DISTANCES)}')
        if self.qbc_distance == 'kl' and self.head == 'deterministic':
            bad('qbc_distance', 'kl', 'a deterministic head has no distribution: use l2 or mse')
        if self.weighting is not None and self.weighting not in WEIGHTINGS:
            bad('weighting', self.weighting, f'use one of {", ".join(WEIGHTINGS)}')
        if self.resolved_weighting != 'none' and not self.uses_qbc:
            bad('weighting', self.weighting, f'method {self.method!r} has no QBC term to weight: '
                'use qail_wqbc, qail_qbc or qbc')
        if self.canonical_method == 'qail_wqbc' and self.resolved_weighting == 'none':
            bad('weighting', 'none', 'qail_wqbc is the weighted method: use qail_qbc for none')
        if self.state_perturbation not in STATE_PERTURBATIONS:
            bad('state_perturbation', self.state_perturbation,
                f'use one of {", ".join(STATE_PERTURBATIONS)}')
        if self.image_perturbation not in IMAGE_PERTURBATIONS:
            bad('image_perturbation', self.image_perturbation,
                f'use one of {", ".join(IMAGE_PERTURBATIONS)}')
        if str(self.device).split(':')[0] not in ('cpu', 'cuda', 'auto'):
            bad('device', self.device, "use 'cpu', 'cuda' or 'auto'")
        if self.precision not in ('fp32', 'bf16'):
            bad('precision', self.precision, "use 'fp32' or 'bf16'")
        if self.student_init not in ('ptq', 'lsq'):
            bad('student_init', self.student_init, "use 'ptq' or 'lsq'")
        checks = [
            ('lam', self.lam >= 0, 'must be >= 0'),
            ('beta', self.beta >= 1, 'must be >= 1'),
            ('percentile', 0 <= self.percentile <= 100, 'must be in [0, 100]'),
            ('subset_fraction', 0 < self.subset_fraction <= 1, 'must be in (0, 1]'),
            ('state_scale', self.state_scale > 0, 'must be > 0'),
            ('image_grid', self.image_grid >= 1, 'must be >= 1'),
            ('lr', self.lr > 0, 'must be > 0'),
            ('steps', self.steps >= 0, 'must be >= 0'),
            ('batch_size', self.batch_size >= 1, 'must be >= 1'),
            ('weight_decay', self.weight_decay >= 0, 'must be >= 0'),
            ('grad_clip', self.grad_clip is None or self.grad_clip > 0, 'must be > 0 or null'),
            ('temperature', self.temperature > 0, 'must be > 0'),
            ('onpolicy_every', self.onpolicy_every >= 0, 'must be >= 0 (0 = off)'),
            ('onpolicy_episodes', self.onpolicy_episodes >= 1, 'must be >= 1'),
            ('onpolicy_max_steps', self.onpolicy_max_steps is None or
             self.onpolicy_max_steps >= 1, 'must be >= 1 or null'),
            ('onpolicy_pool', self.onpolicy_pool >= 1, 'must be >= 1'),
            ('onpolicy_fraction', 0 <= self.onpolicy_fraction < 1, 'must be in [0, 1)'),
            ('calib_samples', self.calib_samples >= 1, 'must be >= 1'),
            ('log_every', self.log_every >= 1, 'must be >= 1'),
            ('grad_accum', self.grad_accum >= 1, 'must be >= 1'),
            ('checkpoint_every', self.checkpoint_every >= 0, 'must be >= 0 (0 = off)'),
        ]
        for name, ok, why in checks:
            if not ok:
                bad(name, getattr(self, name), why)

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        if not isinstance(data, dict):
            raise TrainConfigError(f'a training config must be a mapping, got '
                                   f'{type(data).__name__}')
        check_known_keys(data, cls, 'training config', TrainConfigError)
        return cls(**data)

    def to_yaml(self, path: str | Path | None = None) -> str:
        import yaml
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml(cls, source: str | Path) -> TrainConfig:
        """Load from a YAML file path or a YAML string."""
        import yaml
        text = source
        if isinstance(source, Path) or (isinstance(source, str) and '\n' not in source
                                        and Path(source).suffix in ('.yaml', '.yml')):
            path = Path(source)
            if not path.is_file():
                raise TrainConfigError(f'no training config at {path}')
            text = path.read_text()
        return cls.from_dict(yaml.safe_load(text) or {})

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)
