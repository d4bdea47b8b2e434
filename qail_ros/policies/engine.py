"""The demo conv image policy (ConvActionRegressor) as an engine of the registry.

    from qail_ros.engines import load_engine
    engine = load_engine('policy.safetensors')            # ConvActionRegressor.save()
    engine = load_engine(None, architecture='conv-image-policy',
                         config={'image_size': 224, 'seed': 0})   # seeded, untrained weights
    out = engine.infer({'image': rgb_uint8, 'instruction': 'pick up the red block'})
    out['action'], out['raw']          # (7,) in [-1, 1], and the head's outputs before tanh

Architecture 'conv-image-policy': a camera frame (uint8 RGB, any size; resized inside) and an
instruction in, the action out, on torch at one of PRECISIONS:
  fp32          the network as is
  bf16          weights and activations in bfloat16 (the whole network)
  int8-dynamic  torch.ao dynamic quantization: nn.Linear weights int8, activations quantized per
                batch at run time; the convolutions stay fp32 (dynamic quantization has no conv
                kernels), so only the FiLM / MLP head changes
(what a CPU runs; the real comparison is FP32 vs W8A8 vs W4A4 engines on a Jetson). The
monitor's `--image-policy fp32,int8-dynamic,bf16` runs the image_policy node at each.

Its manifest is derived from the weights file (the config travels in the file's metadata) or,
without a file, from the config: the seeded
initialisation makes the weights a function of the config, so the config's hash is the source
hash. The OpenVINO engines of the same network (`export_openvino`) are tensor-level engines of
architecture 'conv-action-regressor' with their own manifests.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from qail_ros.engines.base import Engine, EngineError, device_id
from qail_ros.engines.manifest import Manifest, cache_key

__all__ = ['ARCHITECTURE', 'PRECISIONS', 'ConvPolicyEngine', 'weights_manifest']

ARCHITECTURE = 'conv-image-policy'


def weights_manifest(path: Path | None, *, precision: str | None = None,
                     backend: str | None = None, config: dict[str, Any] | None = None,
                     options: dict[str, Any] | None = None, device: str = 'cpu') -> Manifest:
    """The manifest of a ConvActionRegressor weights file, or (path None) of the seeded
    network of `config`."""
    from qail_ros.engines.cache import content_hash
    from qail_ros.policies.conv_action_regressor import ConvActionRegressorConfig
    if precision not in (None, *PRECISIONS) or backend not in (None, 'torch'):
        raise EngineError(f'the conv image policy runs {" / ".join(PRECISIONS)} on torch, not '
                          f'{precision} on {backend}')
    precision = precision or 'fp32'
    if options:
        raise EngineError(f'the conv image policy has no load options (got {sorted(options)})')
    if path is not None:
        if config:
            raise EngineError(f'{path}: the weights file carries its config; give no config')
        if not path.is_file():
            raise EngineError(f'policy weights not found: {path}')
        from safetensors import safe_open
        try:
            with safe_open(str(path), 'np') as f:
                meta = f.metadata() or {}
            cfg = ConvActionRegressorConfig(**json.loads(meta['config']))
        except Exception as exc:  # noqa: BLE001 - not safetensors, no or a bad config
            raise EngineError(f'{path} was not saved by ConvActionRegressor.save() '
                              f'({type(exc).__name__}: {exc})') from None
        source = content_hash(path)
    else:
        try:
            cfg = ConvActionRegressorConfig(**(config or {}))
        except (TypeError, ValueError) as exc:
            raise EngineError(f'conv image policy config: {exc}') from None
        text = json.dumps(dataclasses.asdict(cfg), sort_keys=True)
        source = hashlib.sha256(b'seeded conv-image-policy\n' + text.encode()).hexdigest()
    version, dev = ConvPolicyEngine.backend_version(), device_id(device)
    return Manifest(
        engine_file='' if path is None else path.name, engine_sha256=source,
        architecture={'name': ARCHITECTURE,
                      'config': json.loads(json.dumps(dataclasses.asdict(cfg)))},
        precision=precision, backend='torch', backend_version=version, device=dev,
        inputs={'image': {'shape': [None, None, 3], 'dtype': 'uint8',
                          'example_shape': [cfg.image_size, cfg.image_size, 3]},
                'instruction': {'shape': [], 'dtype': 'str'}},
        outputs={'action': {'shape': [cfg.action_dim], 'dtype': 'float32'},
                 'raw': {'shape': [cfg.action_dim], 'dtype': 'float32'}},
        source_hash=source,
        normalisation={'image': 'RGB / 255, resized to image_size (bilinear, antialiased), '
                                'ImageNet mean / std (ConvActionRegressor.preprocess)',
                       'instruction': 'hash_instruction vector'},
        cache_key=cache_key(source, 'torch', version, dev, precision),
        details={'derived_from': 'seeded config' if path is None else 'weights file',
                 'trained': path is not None})


class ConvPolicyEngine(Engine):
    """ConvActionRegressor behind the engine interface (`engine.model` is the network)."""

    BACKEND = 'torch'
    PRECISIONS = ('fp32', 'bf16', 'int8-dynamic')

    @classmethod
    def backend_version(cls) -> str:
        import torch
        return str(torch.__version__)

    def _load(self) -> None:
        import torch

        from qail_ros.policies.conv_action_regressor import (ConvActionRegressor,
                                                             ConvActionRegressorConfig)
        torch.set_num_threads(self.threads)
        if self.path is not None:
            self.model = ConvActionRegressor.load(self.path)
        else:
            cfg = dict(self.manifest.architecture['config'])
            self.model = ConvActionRegressor(ConvActionRegressorConfig(**cfg))
        self.model.eval()
        if self.manifest.precision == 'int8-dynamic':
            from torch.ao.quantization import quantize_dynamic
            self.model = quantize_dynamic(self.model, {torch.nn.Linear}, dtype=torch.qint8)
        elif self.manifest.precision == 'bf16':
            self.model = self.model.to(torch.bfloat16)

    def _infer(self, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        action, raw = self.model.predict_with_raw(inputs['image'], inputs['instruction'])
        return {'action': action, 'raw': raw}

    def warmup(self, runs: int = 1, instruction: str = '') -> float:
        """`runs` predictions on a black frame at the network's size (first calls allocate)."""
        import time
        side = self.model.config.image_size
        start = time.perf_counter()
        for _ in range(max(int(runs), 1)):
            self.model.predict(np.zeros((side, side, 3), np.uint8), instruction)
        return time.perf_counter() - start

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), 'parameters': self.model.num_parameters(),
                'trained': self.path is not None}


#: the precisions of the conv image policy (module docstring)
PRECISIONS = ConvPolicyEngine.PRECISIONS
