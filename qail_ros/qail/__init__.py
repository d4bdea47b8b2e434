"""QAIL: quantization-aware imitation learning for any PyTorch policy (MLP, CILRS, OpenVLA).

A quantized student, initialised from a frozen full-precision teacher, is fine-tuned with
`L = L_QAIL + lambda * L_QBC`: behaviour cloning on D_QAIL = D_E ∪ D_FP (`qail_loss`) plus the
distance of its outputs to the teacher's (`qbc_loss`), optionally weighted per state by
saliency (wQBC, a.k.a. SIS/QRD: `importance_weights`). `QAILTrainer` runs it; `attdiv` and
`save_saliency_png` compare where the two policies look. `qail_ros.physics.qail_tasks` wires it
to the DeepMind Control tasks (used by `qail-ros train / eval / bench physics`).

Importing this package loads no torch: names resolve on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    'qail_loss': 'qail_ros.qail.losses',
    'qbc_loss': 'qail_ros.qail.losses',
    'lppd_loss': 'qail_ros.qail.losses',
    'total_loss': 'qail_ros.qail.losses',
    'weighted_mean': 'qail_ros.qail.losses',
    'output_tensor': 'qail_ros.qail.losses',
    'image_saliency': 'qail_ros.qail.saliency',
    'state_saliency': 'qail_ros.qail.saliency',
    'state_scores': 'qail_ros.qail.saliency',
    'gaussian_blur': 'qail_ros.qail.saliency',
    'importance_threshold': 'qail_ros.qail.saliency',
    'importance_weights': 'qail_ros.qail.saliency',
    'compute_scores': 'qail_ros.qail.saliency',
    'canonical_weighting': 'qail_ros.qail.saliency',
    'SISCache': 'qail_ros.qail.saliency',
    'attdiv': 'qail_ros.qail.attdiv',
    'normalize_map': 'qail_ros.qail.attdiv',
    'save_saliency_png': 'qail_ros.qail.attdiv',
    'TrainConfig': 'qail_ros.qail.config',
    'TrainConfigError': 'qail_ros.qail.config',
    'METHODS': 'qail_ros.qail.config',
    'parse_bits': 'qail_ros.qail.config',
    'ImitationData': 'qail_ros.qail.data',
    'QAILTrainer': 'qail_ros.qail.trainer',
    'StudentHooks': 'qail_ros.qail.trainer',
    'TensorHooks': 'qail_ros.qail.trainer',
    'StudentBatch': 'qail_ros.qail.trainer',
    'TrainResult': 'qail_ros.qail.trainer',
    'make_student': 'qail_ros.qail.trainer',
    'output_gap': 'qail_ros.qail.trainer',
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
