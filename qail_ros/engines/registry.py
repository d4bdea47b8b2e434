"""Back ends and architectures by name; `load_engine` dispatches on the manifest."""
from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any, Callable

from qail_ros.engines.base import Engine, EngineError, ManifestMismatchError, device_id
from qail_ros.engines.manifest import read_manifest

__all__ = ['BACKENDS', 'ARCHITECTURES', 'register_backend', 'register_architecture',
           'backend_class', 'architecture_factory', 'load_engine', 'check_expected']

log = logging.getLogger('qail_ros.engines')

#: backend name -> 'module:Class' (imported only when an engine of that back end is loaded)
BACKENDS: dict[str, str] = {
    'torch': 'qail_ros.engines.torch_engine:TorchEngine',
    'onnxruntime': 'qail_ros.engines.ort_engine:OrtEngine',
    'torch-int8': 'qail_ros.quant.int_engine:IntEngine',
    'tensorrt': 'qail_ros.engines.tensorrt_engine:TensorRTEngine',
    'openvino': 'qail_ros.engines.openvino_engine:OpenVINOEngine',
}

#: architecture name -> 'module:function(config dict) -> torch.nn.Module' (FP model factory)
ARCHITECTURES: dict[str, str] = {
    'cilrs': 'qail_ros.cilrs.model:build_model',
    'mlp': 'qail_ros.physics.policy:build_mlp',
}


def register_backend(name: str, target: str) -> None:
    """Add a back end: register_backend('mlc', 'my_pkg.engines:MLCEngine')."""
    BACKENDS[name] = target


def register_architecture(name: str, target: str) -> None:
    ARCHITECTURES[name] = target


def _resolve(target: str) -> Any:
    module, _, attr = target.partition(':')
    return getattr(importlib.import_module(module), attr)


def backend_class(name: str) -> type[Engine]:
    if name not in BACKENDS:
        raise EngineError(f'unknown engine back end {name!r}; known: {sorted(BACKENDS)} '
                          '(register_backend adds one)')
    return _resolve(BACKENDS[name])


def architecture_factory(name: str) -> Callable[[dict], Any]:
    if name not in ARCHITECTURES:
        raise EngineError(f'unknown architecture {name!r}; known: {sorted(ARCHITECTURES)}')
    return _resolve(ARCHITECTURES[name])


def check_expected(path: Path, manifest, expect: dict[str, Any]) -> None:
    """Compare manifest fields with what the caller needs; one error naming every mismatch.

    expect keys: 'architecture' (name), 'precision', 'backend', 'inputs' (spec dict),
    'outputs', 'config' ({key: value} that must match architecture.config).
    """
    problems = []
    arch = manifest.architecture or {}
    for key, want in expect.items():
        if key == 'architecture':
            have = arch.get('name')
        elif key == 'config':
            cfg = arch.get('config', {})
            for k, v in want.items():
                if cfg.get(k) != v:
                    problems.append(f'config.{k} is {cfg.get(k)!r}, expected {v!r}')
            continue
        else:
            have = getattr(manifest, key)
        if have != want:
            problems.append(f'{key} is {have!r}, expected {want!r}')
    if problems:
        raise ManifestMismatchError(
            f'engine {path.name} does not match this node: ' + '; '.join(problems) +
            '. Fix: point the node at an engine built for these settings, or change the '
            'node parameters to the engine\'s (see its manifest ' + path.name + '.json)')


def load_engine(path: str | Path, *, threads: int = 1, device: str = 'cpu',
                expect: dict[str, Any] | None = None, verify_file: bool = True) -> Engine:
    """Load an engine file (or its manifest) with the back end its manifest names."""
    engine_path, manifest = read_manifest(path, verify_file=verify_file)
    if expect:
        check_expected(engine_path, manifest, expect)
    cls = backend_class(manifest.backend)
    if cls.PRECISIONS and manifest.precision not in cls.PRECISIONS:
        raise EngineError(f'{engine_path.name}: back end {manifest.backend!r} does not run '
                          f'precision {manifest.precision!r} (it runs {list(cls.PRECISIONS)})')
    version, here = cls.backend_version(), device_id(device)
    stale = []
    if manifest.backend_version != version:
        stale.append(f'built with {manifest.backend} {manifest.backend_version}, this is '
                     f'{version}')
    if manifest.device != here:
        stale.append(f'built on {manifest.device}, this is {here}')
    if stale:
        msg = f'engine {engine_path.name}: ' + '; '.join(stale)
        if cls.VERSION_BOUND:
            raise EngineError(msg + ': this back end cannot load it; rebuild it here (the '
                              'EngineCache does so automatically)')
        log.warning('%s (it runs, but rebuild it for the best kernels)', msg)
    try:
        return cls(engine_path, manifest, threads=threads, device=device)
    except EngineError:
        raise
    except Exception as exc:  # noqa: BLE001 - every back end fails in its own way
        raise EngineError(f'engine {engine_path} could not be loaded by {manifest.backend} '
                          f'({type(exc).__name__}: {exc}): the file does not match its '
                          'manifest; rebuild it') from exc
