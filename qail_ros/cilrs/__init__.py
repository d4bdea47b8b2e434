"""CILRS: the conditional imitation-learning driving policy (camera + speed + command -> control).

    from qail_ros.cilrs import CILRSConfig, build_model, postprocess
    model = build_model(CILRSConfig(resnet=18, height=96, width=288))

`config` (torch-free) holds the architecture and the input contract; `model` (torch) the network,
BatchNorm folding, FLOP counting and checkpoints; `export` builds the engine files
(qail_ros.engines) from a checkpoint. See docs/cilrs.md.
"""
from __future__ import annotations

from qail_ros.cilrs.config import (COMMAND_NAMES, IMAGENET_MEAN, IMAGENET_STD, CILRSConfig,
                                   command_index, postprocess, select_branch)

__all__ = ['CILRSConfig', 'COMMAND_NAMES', 'IMAGENET_MEAN', 'IMAGENET_STD', 'command_index',
           'select_branch', 'postprocess', 'build_model']


def build_model(config: CILRSConfig | dict | None = None, **kwargs):
    """A CILRS torch model (imports torch); see qail_ros.cilrs.model.CILRS."""
    from qail_ros.cilrs.model import build_model as _build
    return _build(config, **kwargs)
