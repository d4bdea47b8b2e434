"""Helpers shared by the quantization passes (quantize_, AWQ, integer and onnxruntime
conversion, LoRA): swapping a layer in a model, running calibration data, the info attribute.

    set_module(model, name, new)          put `new` at the dotted `name` (root: class swap)
    run_calibration(model, calibration)   the calibration forward passes, eval + no_grad
    INFO_ATTR                             attribute of a quantized model read by
                                          quantization_report (config, layers, skipped)
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from qail_ros.quant.config import QuantConfigError

__all__ = ['INFO_ATTR', 'Calibration', 'set_module', 'run_calibration', 'calibration_batches']

#: attribute set on a quantized model: config dict, quantized layer names, skipped layers.
INFO_ATTR = '_qail_quant'

Calibration = Tensor | tuple | dict | list | Callable[[nn.Module], Any] | None


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` at `name`; the root itself (name '') is converted in place (class swap)."""
    if not name:
        if not isinstance(new, type(model)):
            raise QuantConfigError(f'cannot convert the root {type(model).__name__} in place')
        state = {k: v for k, v in new.__dict__.items()}
        model.__class__ = type(new)
        model.__dict__.update(state)
        return
    parent_name, _, child = name.rpartition('.')
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def calibration_batches(calibration: Calibration) -> Iterable[tuple[tuple, dict]]:
    """(args, kwargs) of each batch in `calibration` (not a callable: see run_calibration)."""
    if isinstance(calibration, Tensor):
        yield (calibration,), {}
    elif isinstance(calibration, tuple):
        yield calibration, {}
    elif isinstance(calibration, dict):
        yield (), calibration
    elif isinstance(calibration, list):
        if not calibration:
            raise QuantConfigError('calibration is an empty list: give at least one batch')
        for item in calibration:
            if isinstance(item, list):
                raise QuantConfigError('calibration: a list of batches cannot nest lists')
            yield from calibration_batches(item)
    else:
        raise QuantConfigError(f'calibration of type {type(calibration).__name__} not '
                               'understood: give a Tensor, a tuple of args, a dict of kwargs, a '
                               'list of those, or a callable fn(model)')


def run_calibration(model: nn.Module, calibration: Calibration) -> None:
    """Run the calibration forward passes in eval mode without gradients."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if callable(calibration) and not isinstance(calibration, (Tensor, nn.Module)):
                calibration(model)
            else:
                for args, kwargs in calibration_batches(calibration):
                    model(*args, **kwargs)
    finally:
        model.train(was_training)
