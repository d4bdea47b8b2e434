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

from qail_ros.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    '.losses': ('qail_loss', 'qbc_loss', 'lppd_loss', 'total_loss', 'weighted_mean',
                'output_tensor'),
    '.saliency': ('image_saliency', 'state_saliency', 'state_scores', 'gaussian_blur',
                  'importance_threshold', 'importance_weights', 'compute_scores',
                  'canonical_weighting', 'SISCache'),
    '.attdiv': ('attdiv', 'normalize_map', 'save_saliency_png'),
    '.config': ('TrainConfig', 'TrainConfigError', 'METHODS', 'parse_bits'),
    '.data': ('ImitationData',),
    '.trainer': ('QAILTrainer', 'StudentHooks', 'TensorHooks', 'StudentBatch', 'TrainResult',
                 'make_student', 'output_gap'),
})
