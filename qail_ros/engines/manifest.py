"""Engine manifests: the JSON file next to an engine file that says what it is.

`<engine file>.json`, e.g. `cilrs_r34_w8a8.onnx.json`:
  format           'qail_ros.engine/1'
  engine_file      file name of the engine (same directory)
  engine_sha256    hash of the engine file: a truncated, corrupt or swapped file is refused
  architecture     {'name': 'cilrs', 'config': {...}}: rebuilds the network (torch back ends)
                   and lets a node check the engine answers its input contract
  precision        'fp32' | 'bf16' | 'w8a8' | 'w4a4' | ...
  backend          registry name ('torch', 'onnxruntime', 'torch-int8', 'tensorrt')
  backend_version  version of the back end that built it
  device           device_id() of the machine that built it
  inputs, outputs  {name: {'shape': [...], 'dtype': 'float32'}} at batch 1
  normalisation    how raw sensor values become the inputs (the node applies it)
  source_hash      sha256 of the source model (checkpoint) the engine was built from
  cache_key        hash of (source_hash, backend, backend_version, device, precision)
  details          back-end specific facts (quantization scheme, calibration size, ...)
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from qail_ros.engines.base import EngineError

__all__ = ['MANIFEST_FORMAT', 'Manifest', 'manifest_path', 'read_manifest', 'write_manifest',
           'sha256_file', 'cache_key']

MANIFEST_FORMAT = 'qail_ros.engine/1'
_REQUIRED = ('format', 'engine_file', 'engine_sha256', 'architecture', 'precision', 'backend',
             'backend_version', 'device', 'inputs', 'outputs', 'source_hash')


@dataclasses.dataclass
class Manifest:
    engine_file: str
    engine_sha256: str
    architecture: dict[str, Any]
    precision: str
    backend: str
    backend_version: str
    device: str
    inputs: dict[str, dict[str, Any]]
    outputs: dict[str, dict[str, Any]]
    source_hash: str
    normalisation: dict[str, Any] = dataclasses.field(default_factory=dict)
    cache_key: str = ''
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    format: str = MANIFEST_FORMAT

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def manifest_path(engine_path: str | Path) -> Path:
    """The manifest of an engine file: the same path with '.json' appended."""
    p = Path(engine_path)
    return p if p.name.endswith('.json') else p.with_name(p.name + '.json')


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cache_key(source_hash: str, backend: str, backend_version: str, device: str,
              precision: str) -> str:
    text = '\n'.join((source_hash, backend, backend_version, device, precision))
    return hashlib.sha256(text.encode()).hexdigest()


def write_manifest(manifest: Manifest, directory: str | Path) -> Path:
    path = manifest_path(Path(directory) / manifest.engine_file)
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(json.dumps(manifest.to_dict(), indent=2) + '\n')
    tmp.replace(path)
    return path


def read_manifest(path: str | Path, *, verify_file: bool = True) -> tuple[Path, Manifest]:
    """(engine file path, manifest) from an engine file or its manifest; checks both.

    Raises EngineError naming the problem and the fix: no manifest, unreadable JSON, missing
    fields, unknown format, engine file missing, or an engine file whose sha256 differs.
    """
    path = Path(path)
    mpath = manifest_path(path)
    rebuild = ('build the engine again with its builder (CILRS: `python -m '
               'qail_ros.cilrs.export --out DIR`), which writes the engine file and its '
               'manifest together')
    if not mpath.is_file() and path != mpath and not path.exists():
        raise EngineError(f'engine file {path} not found (nor its manifest {mpath.name}): '
                          f'check the path, or {rebuild}')
    if not mpath.is_file():
        what = f'engine file {path}' if path != mpath else 'it'
        raise EngineError(f'engine manifest {mpath} not found (needed next to {what}): '
                          f'{rebuild}')
    try:
        data = json.loads(mpath.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EngineError(f'engine manifest {mpath} is not valid JSON ({exc}): {rebuild}') \
            from None
    if not isinstance(data, dict):
        raise EngineError(f'engine manifest {mpath} is not a JSON object: {rebuild}')
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise EngineError(f'engine manifest {mpath} lacks {missing}: {rebuild}')
    if data['format'] != MANIFEST_FORMAT:
        raise EngineError(f"engine manifest {mpath} has format {data['format']!r}, this "
                          f'qail_ros reads {MANIFEST_FORMAT!r}: {rebuild}')
    known = {f.name for f in dataclasses.fields(Manifest)}
    manifest = Manifest(**{k: v for k, v in data.items() if k in known})
    engine = mpath.with_name(manifest.engine_file)
    if path != mpath and path.name != manifest.engine_file:
        raise EngineError(f'manifest {mpath} describes {manifest.engine_file!r}, not '
                          f'{path.name!r}: the files were renamed or mixed up; {rebuild}')
    if not engine.is_file():
        raise EngineError(f'engine file {engine} (named by {mpath.name}) not found: {rebuild}')
    if verify_file:
        digest = sha256_file(engine)
        if digest != manifest.engine_sha256:
            raise EngineError(
                f'engine file {engine} is corrupt or was replaced after it was built (sha256 '
                f'{digest[:12]}... but its manifest says {manifest.engine_sha256[:12]}...): '
                f'{rebuild}')
    return engine, manifest
