"""A safe engine cache: reuse a built engine only when everything it depends on is unchanged.

Key = sha256(source model hash, back end, back-end version, device id, precision). The entry
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

__all__ = ['EngineCache', 'BuildFn']

log = logging.getLogger('qail_ros.engines')

#: build_fn(engine_path) writes the engine file and returns the manifest fields it knows:
#: architecture, inputs, outputs, normalisation, details.
BuildFn = Callable[[Path], dict[str, Any]]


class EngineCache:
    """Engines under `root`, keyed by what they were built from and for."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def key(self, source_hash: str, backend: str, precision: str, device: str = 'cpu') -> str:
        from qail_ros.engines.registry import backend_class
        return cache_key(source_hash, backend, backend_class(backend).backend_version(),
                         device_id(device), precision)

    def get_or_build(self, source: str | Path, name: str, *, backend: str, precision: str,
                     build_fn: BuildFn, suffix: str, device: str = 'cpu',
                     source_hash: str | None = None) -> tuple[Path, bool]:
        """(engine path, rebuilt?) for `source` built by `build_fn` into `<root>/<name><suffix>`.

        `source_hash` defaults to the sha256 of the source file.
        """
        from qail_ros.engines.registry import backend_class
        source_hash = source_hash or sha256_file(source)
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
