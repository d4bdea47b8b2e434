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

import importlib
from typing import Any

__all__ = ['ConvActionRegressor', 'ConvActionRegressorConfig', 'ACTION_LABELS',
           'hash_instruction', 'tokenize']

_LAZY = {
    'ConvActionRegressor': 'qail_ros.policies.conv_action_regressor',
    'ConvActionRegressorConfig': 'qail_ros.policies.conv_action_regressor',
    'ACTION_LABELS': 'qail_ros.policies.instruction',
    'hash_instruction': 'qail_ros.policies.instruction',
    'tokenize': 'qail_ros.policies.instruction',
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
