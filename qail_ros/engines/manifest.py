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
           'sha256_file', 'cache_key', 'CHECKSUMS_FILE', 'write_checksums', 'read_checksums',
           'verify_checksums', 'check_checksums']

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
    rebuild = ('build the engine again with its builder (`qail-ros export SOURCE -o DIR`; '
               'CILRS: `qail-ros export CHECKPOINT|cilrs -o DIR`), which writes the engine file '
               'and its manifest together')
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
    # A SHA256SUMS next to them (qail-ros verify --write) also covers the manifest itself.
    check_checksums(mpath.parent, names=[mpath.name])
    if verify_file:
        digest = sha256_file(engine)
        if digest != manifest.engine_sha256:
            raise EngineError(
                f'engine file {engine} is corrupt or was replaced after it was built (sha256 '
                f'{digest[:12]}... but its manifest says {manifest.engine_sha256[:12]}...): '
                f'{rebuild}')
    return engine, manifest


# ------------------------------------------------------------------------------------------
# directory checksums (`qail-ros verify`): SHA256SUMS, the format `sha256sum -c` reads
# ------------------------------------------------------------------------------------------
#: One line per file of a model / checkpoint directory: '<sha256>  <path relative to it>'.
CHECKSUMS_FILE = 'SHA256SUMS'


def _directory_files(directory: Path) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob('*')
                  if p.is_file() and p.name != CHECKSUMS_FILE
                  and not p.name.endswith('.tmp') and '__pycache__' not in p.parts)


def write_checksums(directory: str | Path, names: list[str] | None = None) -> Path:
    """Hash every file under `directory` (or only `names`, relative paths) into
    `directory/SHA256SUMS`; returns its path."""
    directory = Path(directory)
    names = _directory_files(directory) if names is None else sorted(names)
    lines = [f'{sha256_file(directory / name)}  {name}\n' for name in names]
    path = directory / CHECKSUMS_FILE
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(''.join(lines))
    tmp.replace(path)
    return path


def read_checksums(directory: str | Path) -> dict[str, str] | None:
    """{relative path: sha256} from `directory/SHA256SUMS`; None when there is none."""
    path = Path(directory) / CHECKSUMS_FILE
    if not path.is_file():
        return None
    sums = {}
    for number, line in enumerate(path.read_text(errors='replace').splitlines(), 1):
        if not line.strip():
            continue
        digest, sep, name = line.partition('  ')
        if not sep or len(digest) != 64 or not name:
            raise EngineError(f'{path}:{number} is not "<sha256>  <file>": write the file '
                              f'again with qail-ros verify {directory} --write')
        sums[name.lstrip('*')] = digest.lower()
    return sums


def verify_checksums(directory: str | Path, names: list[str] | None = None
                     ) -> dict[str, list[str]] | None:
    """Compare the files with SHA256SUMS: {'changed': [...], 'missing': [...], 'unlisted':
    [...]} (`names`: only those files), or None without a SHA256SUMS."""
    directory = Path(directory)
    sums = read_checksums(directory)
    if sums is None:
        return None
    wanted = sums if names is None else {n: sums[n] for n in names if n in sums}
    report: dict[str, list[str]] = {'changed': [], 'missing': [], 'unlisted': []}
    for name, digest in sorted(wanted.items()):
        path = directory / name
        if not path.is_file():
            report['missing'].append(name)
        elif sha256_file(path) != digest:
            report['changed'].append(name)
    if names is None:
        report['unlisted'] = [n for n in _directory_files(directory) if n not in sums]
    return report


def check_checksums(directory: str | Path, error: type[Exception] = EngineError,
                    names: list[str] | None = None) -> bool:
    """Raise `error` naming every changed or missing file when `directory` has a SHA256SUMS
    that they no longer match; True when checked, False when there is no SHA256SUMS."""
    report = verify_checksums(directory, names)
    if report is None:
        return False
    bad = [f'{n} (changed)' for n in report['changed']] + \
        [f'{n} (missing)' for n in report['missing']]
    if bad:
        raise error(f'{directory}: {", ".join(bad)} no longer match {CHECKSUMS_FILE}: the '
                    'files were modified, truncated or replaced after it was written. Fix: '
                    'copy them again from the source; qail-ros verify DIR lists what differs '
                    '(and --write records a copy you trust)')
    return True
