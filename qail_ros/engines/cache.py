"""A safe engine cache: reuse a built engine only when everything it depends on is unchanged.

Key = sha256(source model hash, back end, back-end version, device id, precision). The source
model hash is taken from its CONTENT (`content_hash`): for a safetensors file, the tensors'
names, dtypes, shapes and bytes in name order plus its metadata as sorted JSON, so two
processes that save the same tensors get the same key although safetensors writes the header
(its metadata map) in a different order each time; other files are hashed whole. The entry
`<root>/<name>.<ext>` + manifest is reused when its manifest's cache_key equals the key computed
now AND the engine file's sha256 matches the manifest; otherwise it is rebuilt (written to a
temporary name, then renamed, so a crash never leaves a half-written engine under the real
name). Contrast: Isaac ROS's TensorRT node reuses any plan file present and fails hard when it
cannot load it.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

from qail_ros.engines.base import EngineError, device_id
from qail_ros.engines.manifest import (Manifest, cache_key, read_manifest, sha256_file,
                                       write_manifest)

__all__ = ['EngineCache', 'BuildFn', 'content_hash', 'safetensors_content_hash']

log = logging.getLogger('qail_ros.engines')

#: build_fn(engine_path) writes the engine file and returns the manifest fields it knows:
#: architecture, inputs, outputs, normalisation, details.
BuildFn = Callable[[Path], dict[str, Any]]

_CONTENT_VERSION = 'qail_ros.content/1'


def safetensors_content_hash(path: str | Path) -> str:
    """sha256 of a safetensors file's tensors (name, dtype, shape, bytes; in name order) and
    metadata (sorted JSON): equal for equal tensors whatever order the header was written in.

    Reads the header itself (no torch): 8-byte little-endian header length, the JSON header,
    then the data; a file that is not valid safetensors raises EngineError.
    """
    import hashlib
    import json
    import struct
    path = Path(path)
    h = hashlib.sha256(_CONTENT_VERSION.encode())
    with open(path, 'rb') as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise EngineError(f'{path} is not a safetensors file (shorter than its header)')
        (n,) = struct.unpack('<Q', raw)
        size = path.stat().st_size
        if n > size - 8:
            raise EngineError(f'{path} is not a safetensors file (header of {n} bytes)')
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise EngineError(f'{path} is not a safetensors file ({exc})') from None
        base = 8 + n
        meta = header.pop('__metadata__', None) or {}
        h.update(json.dumps(meta, sort_keys=True).encode())
        for name in sorted(header):
            spec = header[name]
            start, end = (int(v) for v in spec['data_offsets'])
            h.update(json.dumps([name, spec['dtype'], list(spec['shape']), end - start])
                     .encode())
            f.seek(base + start)
            left = end - start
            while left:
                block = f.read(min(left, 1 << 20))
                if not block:
                    raise EngineError(f'{path}: tensor {name!r} is truncated')
                h.update(block)
                left -= len(block)
    return h.hexdigest()


def content_hash(path: str | Path) -> str:
    """The hash a source model is keyed by: `safetensors_content_hash` for .safetensors files,
    a hash over the sorted (name, content hash) of the files of a directory, sha256 of the
    bytes for anything else."""
    import hashlib
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob('*') if p.is_file())
        text = '\n'.join(f'{p.relative_to(path)} {content_hash(p)}' for p in files)
        return hashlib.sha256(text.encode()).hexdigest()
    if path.suffix == '.safetensors':
        return safetensors_content_hash(path)
    return sha256_file(path)


class EngineCache:
    """Engines under `root`, keyed by what they were built from and for."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def key(self, source_hash: str, backend: str, precision: str, device: str = 'cpu') -> str:
        from qail_ros.engines.registry import backend_class
        return cache_key(source_hash, backend, backend_class(backend).backend_version(),
                         device_id(device), precision)

    def get_or_build(self, source: str | Path | None, name: str, *, backend: str, precision: str,
                     build_fn: BuildFn, suffix: str, device: str = 'cpu',
                     source_hash: str | None = None) -> tuple[Path, bool]:
        """(engine path, rebuilt?) for `source` built by `build_fn` into `<root>/<name><suffix>`.

        `source_hash` defaults to the source's `content_hash` (its tensors for safetensors);
        with source None, give source_hash.
        """
        from qail_ros.engines.registry import backend_class
        if not source_hash:
            if source is None:
                raise EngineError(f'engine {name}: give its source or source_hash')
            source_hash = content_hash(source)
        version = backend_class(backend).backend_version()
        dev = device_id(device)
        key = cache_key(source_hash, backend, version, dev, precision)
        path = self.root / f'{name}{suffix}'
        reason = self._stale_reason(path, key, {'source_hash': source_hash,
                                                'backend_version': version, 'device': dev,
                                                'precision': precision, 'backend': backend})
        if reason is None:
            return path, False
        log.info('building engine %s (%s)', path.name, reason)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp{suffix}')
        try:
            fields = build_fn(tmp)
            tmp.replace(path)
        finally:
            if tmp.exists():
                tmp.unlink()
        manifest = Manifest(engine_file=path.name, engine_sha256=sha256_file(path),
                            architecture=fields['architecture'], precision=precision,
                            backend=backend, backend_version=version, device=dev,
                            inputs=fields['inputs'], outputs=fields['outputs'],
                            source_hash=source_hash,
                            normalisation=fields.get('normalisation', {}), cache_key=key,
                            details={**fields.get('details', {}), 'rebuilt_because': reason})
        write_manifest(manifest, self.root)
        return path, True

    @staticmethod
    def _stale_reason(path: Path, key: str, want: dict[str, str]) -> str | None:
        """None when the cached entry is valid for `key`, else why it must be rebuilt."""
        if not path.exists():
            return 'not built yet'
        try:
            _, manifest = read_manifest(path)
        except EngineError as exc:
            return f'unusable cache entry: {exc}'
        if manifest.cache_key != key:
            changed = [f'{k} {getattr(manifest, k)!r} -> {v!r}' for k, v in want.items()
                       if getattr(manifest, k) != v]
            return 'changed: ' + ('; '.join(changed) or 'cache key')
        return None
