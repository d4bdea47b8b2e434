"""Back ends and architectures by name; `load_engine` dispatches on the manifest.

One call loads any model:

    load_engine('models/cilrs/cilrs_r18_w8a8.onnx')                # a file + its manifest
    load_engine('models/openvla-tiny', precision='int4_ort',        # a checkpoint directory
                options={'unnorm_key': 'bridge_orig'})
    load_engine('policy.safetensors')                               # ConvActionRegressor.save()
    load_engine(None, architecture='conv-image-policy', config={'seed': 0})   # seeded weights

A file with a manifest (`<file>.json`) is loaded as its manifest says. A source without one (a
Hugging Face style checkpoint directory, a weights file that names its class) gets its manifest
from its architecture's `MANIFEST_SOURCES` function, which reads the source (config.json,
SHA256SUMS, the file's metadata): precision, back end and `options` (model-specific: the
un-normalisation key, the INT4 scheme, a vision engine ...) come from the caller. The engine class
is `ENGINES[(architecture, back end)]` where a model is more than one tensor graph (a pipeline
with its own pre- and post-processing), else `BACKENDS[back end]`. Every target is a
'module:attribute' string, imported only when an engine of it is loaded, so this module imports
no model code.
"""
from __future__ import annotations

import importlib
import json
import logging
import struct
from pathlib import Path
from typing import Any, Callable

from qail_ros.engines.base import Engine, EngineError, ManifestMismatchError, device_id
from qail_ros.engines.manifest import Manifest, manifest_path, read_manifest

__all__ = ['BACKENDS', 'ARCHITECTURES', 'ENGINES', 'MANIFEST_SOURCES', 'CHECKPOINT_TYPES',
           'WEIGHTS_CLASSES', 'register_backend', 'register_architecture', 'register_model',
           'backend_class', 'engine_class', 'architecture_factory', 'source_architecture',
           'derive_manifest', 'load_engine', 'check_expected']

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


#: (architecture, back end) -> 'module:Class': models whose engine is a pipeline (preprocessing,
#: several components, decoding) rather than one tensor graph; looked up before BACKENDS
ENGINES: dict[tuple[str, str], str] = {
    ('openvla', 'torch'): 'qail_ros.openvla.engine:OpenVLAEngine',
    ('openvla', 'onnxruntime'): 'qail_ros.openvla.engine:OpenVLAEngine',
    ('conv-image-policy', 'torch'): 'qail_ros.policies.engine:ConvPolicyEngine',
}

#: architecture -> 'module:function(source, *, precision, backend, config, options, device)
#: -> Manifest': the manifest of a source that has no manifest file
MANIFEST_SOURCES: dict[str, str] = {
    'openvla': 'qail_ros.openvla.engine:checkpoint_manifest',
    'conv-image-policy': 'qail_ros.policies.engine:weights_manifest',
}

#: a checkpoint directory's config.json 'model_type' -> architecture
CHECKPOINT_TYPES: dict[str, str] = {'openvla': 'openvla'}
#: a safetensors file's metadata 'class' -> architecture
WEIGHTS_CLASSES: dict[str, str] = {'ConvActionRegressor': 'conv-image-policy'}


def register_backend(name: str, target: str) -> None:
    """Add a back end: register_backend('mlc', 'my_pkg.engines:MLCEngine')."""
    BACKENDS[name] = target


def register_architecture(name: str, target: str) -> None:
    ARCHITECTURES[name] = target


def register_model(architecture: str, manifest_source: str,
                   engines: dict[str, str]) -> None:
    """Add a model loaded from its own source: register_model('my-vla',
    'my_pkg.vla:manifest', {'torch': 'my_pkg.vla:VLAEngine'})."""
    MANIFEST_SOURCES[architecture] = manifest_source
    for backend, target in engines.items():
        ENGINES[(architecture, backend)] = target


def _resolve(target: str) -> Any:
    module, _, attr = target.partition(':')
    return getattr(importlib.import_module(module), attr)


def backend_class(name: str) -> type[Engine]:
    if name not in BACKENDS:
        raise EngineError(f'unknown engine back end {name!r}; known: {sorted(BACKENDS)} '
                          '(register_backend adds one)')
    return _resolve(BACKENDS[name])


def engine_class(backend: str, architecture: str | None = None) -> type[Engine]:
    """The engine class of `architecture` on `backend`: ENGINES, else the back end's."""
    if architecture is not None and (architecture, backend) in ENGINES:
        cls: type[Engine] = _resolve(ENGINES[(architecture, backend)])
        return cls
    return backend_class(backend)


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


def _safetensors_metadata(path: Path) -> dict[str, Any]:
    """The `__metadata__` of a safetensors header (no torch); {} when it is not one."""
    try:
        with open(path, 'rb') as f:
            raw = f.read(8)
            if len(raw) != 8:
                return {}
            (n,) = struct.unpack('<Q', raw)
            if n > path.stat().st_size - 8:
                return {}
            header = json.loads(f.read(n))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    meta = header.get('__metadata__') if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def source_architecture(path: Path) -> str | None:
    """The architecture a source without a manifest names: a checkpoint directory's
    config.json 'model_type' (CHECKPOINT_TYPES), a safetensors file's metadata 'class'
    (WEIGHTS_CLASSES); None when it names none."""
    if path.is_dir():
        try:
            data = json.loads((path / 'config.json').read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        kind = data.get('model_type') if isinstance(data, dict) else None
        return CHECKPOINT_TYPES.get(kind) if isinstance(kind, str) else None
    if path.suffix == '.safetensors' and path.is_file():
        return WEIGHTS_CLASSES.get(str(_safetensors_metadata(path).get('class')))
    return None


def derive_manifest(path: Path | None, architecture: str | None, *,
                    precision: str | None = None, backend: str | None = None,
                    config: dict[str, Any] | None = None, options: dict[str, Any] | None = None,
                    device: str = 'cpu') -> Manifest:
    """The manifest of a source that has none (see the module docstring)."""
    found = source_architecture(path) if path is not None else None
    if architecture is None:
        architecture = found
    if architecture is None:
        raise EngineError(
            f'{path}: not an engine with a manifest nor a model source this registry knows (a '
            'checkpoint directory whose config.json model_type is one of '
            f'{sorted(CHECKPOINT_TYPES)}, a safetensors file of {sorted(WEIGHTS_CLASSES)}). '
            'Fix: check the path, or build the engine with its builder (it writes the file '
            'and its manifest)')
    if found is not None and found != architecture:
        raise ManifestMismatchError(f'{path} holds a {found!r} model, not {architecture!r}: '
                                    'point the node at a model of its architecture')
    if architecture not in MANIFEST_SOURCES:
        raise EngineError(f'architecture {architecture!r} is loaded from engine files with a '
                          f'manifest only ({path} has none); models loaded from their own '
                          f'source: {sorted(MANIFEST_SOURCES)}')
    manifest: Manifest = _resolve(MANIFEST_SOURCES[architecture])(
        path, precision=precision, backend=backend, config=config or {},
        options=options or {}, device=device)
    return manifest


def load_engine(path: str | Path | None = None, *, precision: str | None = None,
                backend: str | None = None, architecture: str | None = None,
                config: dict[str, Any] | None = None, options: dict[str, Any] | None = None,
                threads: int = 1, device: str = 'cpu', expect: dict[str, Any] | None = None,
                verify_file: bool = True) -> Engine:
    """Load any model as an Engine (warmup, infer, describe).

    path: an engine file (or its manifest), a model source without a manifest (a checkpoint
    directory, a weights file), or None with `architecture` + `config` (a seeded model).
    precision / backend: what to run a source at (an engine file's manifest fixes them: given,
    they must match it). architecture: what the caller needs (a mismatch is an error).
    options: model-specific load options of a source (see its MANIFEST_SOURCES function).
    """
    expect = dict(expect or {})
    src = None if path is None else Path(path)
    engine_path: Path | None
    unknown = (src is not None and architecture is None and source_architecture(src) is None)
    if src is not None and (manifest_path(src).is_file() or unknown):
        # an engine file (read_manifest names what is missing when it is neither)
        if options:
            raise EngineError(f'{src}: options {sorted(options)} apply to model sources, not '
                              'to a built engine (its manifest fixes them)')
        engine_path, manifest = read_manifest(src, verify_file=verify_file)
        for key, value in (('precision', precision), ('backend', backend),
                           ('architecture', architecture)):
            if value is not None:
                expect.setdefault(key, value)
    else:
        manifest = derive_manifest(src, architecture, precision=precision, backend=backend,
                                   config=config, options=options, device=device)
        engine_path = src
    arch = (manifest.architecture or {}).get('name')
    label = engine_path if engine_path is not None else Path(str(arch))
    if expect:
        check_expected(label, manifest, expect)
    cls = engine_class(manifest.backend, arch)
    if cls.PRECISIONS and manifest.precision not in cls.PRECISIONS:
        raise EngineError(f'{label.name}: back end {manifest.backend!r} does not run '
                          f'precision {manifest.precision!r} (it runs {list(cls.PRECISIONS)})')
    version, here = cls.backend_version(), device_id(device)
    stale = []
    if manifest.backend_version != version:
        stale.append(f'built with {manifest.backend} {manifest.backend_version}, this is '
                     f'{version}')
    if manifest.device != here:
        stale.append(f'built on {manifest.device}, this is {here}')
    if stale:
        msg = f'engine {label.name}: ' + '; '.join(stale)
        if cls.VERSION_BOUND:
            raise EngineError(msg + ': this back end cannot load it; rebuild it here (the '
                              'EngineCache does so automatically)')
        log.warning('%s (it runs, but rebuild it for the best kernels)', msg)
    try:
        return cls(engine_path, manifest, threads=threads, device=device)
    except EngineError:
        raise
    except Exception as exc:  # noqa: BLE001 - every back end fails in its own way
        raise EngineError(f'engine {label} could not be loaded by {manifest.backend} '
                          f'({type(exc).__name__}: {exc}): the file does not match its '
                          'manifest; rebuild it') from exc
