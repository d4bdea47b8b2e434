"""The engine interface: load (from a file + manifest), warm up, infer, describe."""
from __future__ import annotations

import functools
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from qail_ros.errors import QailRosError

__all__ = ['Engine', 'EngineError', 'ManifestMismatchError', 'device_id', 'cpu_features']


class EngineError(QailRosError, ValueError):
    """An engine file or manifest that is missing, corrupt, or cannot run here."""


class ManifestMismatchError(EngineError):
    """A valid engine whose manifest does not match what the caller expects."""


_CPU_FLAGS = ('avx2', 'avx512f', 'avx512_vnni', 'avx_vnni', 'avx512_bf16', 'amx_int8', 'asimd',
              'asimddp', 'i8mm')


@functools.lru_cache(maxsize=1)
def cpu_features() -> tuple[str, ...]:
    """The CPU flags that change which int8/bf16 kernels run (from /proc/cpuinfo)."""
    try:
        text = Path('/proc/cpuinfo').read_text()
    except OSError:
        return ()
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith(('flags', 'Features')):
            flags.update(line.split(':', 1)[1].split())
    return tuple(f for f in _CPU_FLAGS if f in flags)


def device_id(device: str = 'cpu') -> str:
    """What a built engine depends on: 'cpu:x86_64:avx2+avx512_vnni...' or 'cuda:sm_87:Orin'."""
    if device.startswith('cuda'):
        import torch  # only asked on GPU machines; engines for GPUs import it anyway
        if not torch.cuda.is_available():
            raise EngineError(f'device {device!r}: no CUDA GPU is visible to torch here. Fix: '
                              "run on a machine with an NVIDIA GPU, or use device 'cpu'")
        idx = int(device.split(':')[1]) if ':' in device else 0
        major, minor = torch.cuda.get_device_capability(idx)
        return f'cuda:sm_{major}{minor}:{torch.cuda.get_device_name(idx).replace(" ", "_")}'
    return f"cpu:{platform.machine()}:{'+'.join(cpu_features()) or 'baseline'}"


class Engine:
    """Base class: subclasses set BACKEND, implement `_load`, `_infer`, `backend_version`.

    An engine is built from `(path, manifest)`; `infer` takes and returns name -> numpy
    arrays as the manifest's `inputs` / `outputs` describe (batch 1; float32 unless a spec
    says otherwise). A spec's shape may hold None (any size: a camera frame's height and
    width; `example_shape` gives the warm-up's), and dtype 'str' is a text input (an
    instruction). `path` is None for a model that has no file (seeded weights).
    """

    BACKEND = ''
    PRECISIONS: tuple[str, ...] = ()
    #: True when an engine built with another back-end version or device cannot be loaded
    #: (TensorRT plans); False when it only runs (maybe slower) and a warning is enough.
    VERSION_BOUND = False

    def __init__(self, path: Path | None, manifest: Any, *, threads: int = 1,
                 device: str = 'cpu'):
        self.path = None if path is None else Path(path)
        self.manifest = manifest
        self.threads = int(threads)
        self.device = device
        self.load_s = 0.0
        start = time.perf_counter()
        self._load()
        self.load_s = time.perf_counter() - start

    # -- to implement -----------------------------------------------------------------------
    @classmethod
    def backend_version(cls) -> str:
        raise NotImplementedError

    def _load(self) -> None:
        raise NotImplementedError

    def _infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    # -- the interface ----------------------------------------------------------------------
    @property
    def precision(self) -> str:
        return self.manifest.precision

    @property
    def backend(self) -> str:
        return self.BACKEND or str(self.manifest.backend)

    @property
    def file(self) -> Path:
        """The engine file; EngineError for a model without one."""
        if self.path is None:
            raise EngineError(f'engine {self.name} has no file (a model built from its config)')
        return self.path

    @property
    def name(self) -> str:
        """The engine file's name (errors, logs); the architecture's without a file."""
        if self.path is not None and self.path.name:
            return self.path.name
        return str((self.manifest.architecture or {}).get('name', 'engine'))

    def input_names(self) -> list[str]:
        return list(self.manifest.inputs)

    def output_names(self) -> list[str]:
        return list(self.manifest.outputs)

    def example_inputs(self, seed: int = 0) -> dict[str, Any]:
        rng = np.random.default_rng(seed)
        out: dict[str, Any] = {}
        for name, spec in self.manifest.inputs.items():
            dtype = spec.get('dtype', 'float32')
            if dtype == 'str':
                out[name] = str(spec.get('example', ''))
                continue
            shape = spec.get('example_shape') or [1 if d is None else d for d in spec['shape']]
            if np.issubdtype(np.dtype(dtype), np.integer):
                out[name] = rng.integers(0, 256, shape).astype(dtype)
            else:
                out[name] = rng.standard_normal(shape).astype(dtype)
        return out

    def warmup(self, runs: int = 3) -> float:
        """Run `runs` inferences on example inputs (first calls allocate); returns seconds."""
        start = time.perf_counter()
        inputs = self.example_inputs()
        for _ in range(max(int(runs), 1)):
            self.infer(inputs)
        return time.perf_counter() - start

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One forward at batch 1; inputs checked against the manifest's shapes."""
        for name, spec in self.manifest.inputs.items():
            if name not in inputs:
                raise EngineError(f'engine {self.name}: input {name!r} missing (inputs: '
                                  f'{list(self.manifest.inputs)})')
            if spec.get('dtype') == 'str':
                if not isinstance(inputs[name], str):
                    raise EngineError(f'engine {self.name}: input {name!r} is text, not '
                                      f'{type(inputs[name]).__name__}')
                continue
            shape, want = list(np.shape(inputs[name])), list(spec['shape'])
            if len(shape) != len(want) or any(w is not None and w != d
                                              for d, w in zip(shape, want)):
                raise EngineError(
                    f'engine {self.name}: input {name!r} has shape {shape}, the engine was '
                    f'built for {want}: resize the input or build an engine for this shape')
        return self._infer(inputs)

    def file_size(self) -> int:
        """Bytes on disk of the engine file (the manifest excluded; a directory's files)."""
        if self.path is None:
            return 0
        if self.path.is_dir():
            return sum(p.stat().st_size for p in self.path.rglob('*') if p.is_file())
        return self.path.stat().st_size

    def describe(self) -> dict[str, Any]:
        return {'backend': self.backend, 'precision': self.precision,
                'backend_version': self.backend_version(), 'device': self.device,
                'device_id': device_id(self.device), 'threads': self.threads,
                'file': None if self.path is None else str(self.path),
                'file_bytes': self.file_size(),
                'architecture': self.manifest.architecture.get('name'),
                'built_with': {'backend_version': self.manifest.backend_version,
                               'device': self.manifest.device},
                'details': self.manifest.details}

    def __repr__(self) -> str:
        return f'<{type(self).__name__} {self.precision} on {self.backend}: {self.name}>'
