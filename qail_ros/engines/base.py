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
        idx = int(device.split(':')[1]) if ':' in device else 0
        major, minor = torch.cuda.get_device_capability(idx)
        return f'cuda:sm_{major}{minor}:{torch.cuda.get_device_name(idx).replace(" ", "_")}'
    return f"cpu:{platform.machine()}:{'+'.join(cpu_features()) or 'baseline'}"


class Engine:
    """Base class: subclasses set BACKEND, implement `_load`, `_infer`, `backend_version`.

    An engine is built from `(path, manifest)`; `infer` takes and returns name -> float32
    numpy arrays as the manifest's `inputs` / `outputs` describe (batch 1).
    """

    BACKEND = ''
    PRECISIONS: tuple[str, ...] = ()
    #: True when an engine built with another back-end version or device cannot be loaded
    #: (TensorRT plans); False when it only runs (maybe slower) and a warning is enough.
    VERSION_BOUND = False

    def __init__(self, path: Path, manifest, *, threads: int = 1, device: str = 'cpu'):
        self.path = Path(path)
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
        return self.BACKEND

    def input_names(self) -> list[str]:
        return list(self.manifest.inputs)

    def output_names(self) -> list[str]:
        return list(self.manifest.outputs)

    def example_inputs(self, seed: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        return {name: rng.standard_normal(spec['shape']).astype(spec.get('dtype', 'float32'))
                for name, spec in self.manifest.inputs.items()}

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
                raise EngineError(f'engine {self.path.name}: input {name!r} missing (inputs: '
                                  f'{list(self.manifest.inputs)})')
            if list(np.shape(inputs[name])) != list(spec['shape']):
                raise EngineError(
                    f'engine {self.path.name}: input {name!r} has shape '
                    f'{list(np.shape(inputs[name]))}, the engine was built for {spec["shape"]}: '
                    'resize the input or build an engine for this shape')
        return self._infer(inputs)

    def file_size(self) -> int:
        """Bytes on disk of the engine file (the manifest excluded)."""
        return self.path.stat().st_size

    def describe(self) -> dict[str, Any]:
        return {'backend': self.BACKEND, 'precision': self.precision,
                'backend_version': self.backend_version(), 'device': self.device,
                'device_id': device_id(self.device), 'threads': self.threads,
                'file': str(self.path), 'file_bytes': self.file_size(),
                'architecture': self.manifest.architecture.get('name'),
                'built_with': {'backend_version': self.manifest.backend_version,
                               'device': self.manifest.device},
                'details': self.manifest.details}

    def __repr__(self) -> str:
        return f'<{type(self).__name__} {self.precision} on {self.BACKEND}: {self.path.name}>'
