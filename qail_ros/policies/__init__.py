"""Policy networks that run and test without ROS (the nodes wrap them).

* `ConvActionRegressor` (conv_action_regressor.py): a small convolutional network, image
  (+ hashed instruction) -> 7-DoF action in [-1, 1]. Seeded, **untrained** unless weights are
  loaded: it exists so that the orin_vla launch runs a real network end to end until the INT4
  OpenVLA policy replaces it. It is not OpenVLA and does not imitate it.
* `hash_instruction` (instruction.py): deterministic feature hashing of an instruction's
  tokens (numpy only).

Importing this package does not import torch; the names are loaded on first use.
"""
from __future__ import annotations

from qail_ros.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    '.conv_action_regressor': ('ConvActionRegressor', 'ConvActionRegressorConfig'),
    '.instruction': ('ACTION_LABELS', 'hash_instruction', 'tokenize'),
})
