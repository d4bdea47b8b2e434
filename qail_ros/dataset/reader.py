"""Reading a built data set: the manifest, raw arrays, and `QailDataset` for torch training.

    from qail_ros.dataset import QailDataset
    ds = QailDataset('runs/ds', split='train')          # torch is imported here, not before
    sample = ds[0]     # {'observation.images.image': uint8 (H, W, 3), 'action': float32 (A,),
                       #  'observation.state': ..., 'teacher.raw_outputs': ..., 'episode_index':..}
    ds.stats['action']['q01']                          # normalisation statistics

Shards are opened with safetensors' `safe_open` and read one sample slice at a time (memory
mapped), so a data set larger than RAM trains fine with several DataLoader workers.
`LazyColumn` is one key read on demand for the trainers (`ImitationData.from_dataset(...,
lazy=True)`): a batch's rows are gathered shard by shard, and at most `max_open` shards are open
at once, so a data set larger than memory trains; `rank_episodes` gives a torchrun rank whole
episodes of its own (it then opens only its shards).
"""
from __future__ import annotations

import bisect
import json
from pathlib import Path
from typing import Any

import numpy as np

from qail_ros.errors import ParameterError

__all__ = ['load_manifest', 'ShardedArrays', 'QailDataset', 'LazyColumn']


def load_manifest(path: str | Path) -> dict[str, Any]:
    from qail_ros.dataset.builder import FORMAT, MANIFEST
    root = Path(path)
    file = root / MANIFEST if root.is_dir() else root
    if not file.exists():
        raise ParameterError(f'{root} is not a qail_ros data set (no {MANIFEST}); build one '
                             'with `qail-ros dataset build BAGS -o DIR`')
    manifest = json.loads(file.read_text())
    if manifest.get('format') != FORMAT:
        raise ParameterError(f"{file}: format '{manifest.get('format')}' is not {FORMAT}")
    return manifest


class ShardedArrays:
    """Sample-indexed access to the arrays of a data set's shards (numpy, lazily opened)."""

    def __init__(self, root: str | Path, manifest: dict[str, Any] | None = None,
                 max_open: int = 16):
        self.root = Path(root)
        self.manifest = manifest or load_manifest(self.root)
        self.shards = self.manifest['shards']
        self._starts = [s['first_sample'] for s in self.shards]
        self._handles: dict[int, Any] = {}
        #: shards kept open at once (least recently used closed first)
        self.max_open = max(1, int(max_open))
        self.keys = list(self.manifest['features'])

    def __len__(self) -> int:
        return int(self.manifest['frames'])

    def _handle(self, shard: int):
        handle = self._handles.pop(shard, None)
        if handle is None:
            from safetensors import safe_open
            while len(self._handles) >= self.max_open:
                self._handles.pop(next(iter(self._handles)))    # the least recently used
            handle = safe_open(str(self.root / self.shards[shard]['file']), framework='np')
        self._handles[shard] = handle                           # now the most recent
        return handle

    def rows(self, key: str, samples: np.ndarray) -> np.ndarray:
        """`key` of the given data set samples (any order), read shard by shard: each
        shard's rows come from one contiguous slice read of that shard."""
        samples = np.asarray(samples, dtype=np.int64).reshape(-1)
        if len(samples) and (samples.min() < 0 or samples.max() >= len(self)):
            raise IndexError(f'samples out of range 0..{len(self) - 1}')
        shard_of = np.searchsorted(self._starts, samples, side='right') - 1
        spec = self.manifest['features'][key]
        out = np.empty((len(samples),) + tuple(spec['shape']), dtype=spec['dtype'])
        for shard in np.unique(shard_of):
            where = np.nonzero(shard_of == shard)[0]
            local = samples[where] - self._starts[shard]
            lo, hi = int(local.min()), int(local.max()) + 1
            block = self._handle(int(shard)).get_slice(key)[lo:hi]
            out[where] = block[local - lo]
        return out

    def locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < len(self):
            raise IndexError(f'sample {index} out of range 0..{len(self) - 1}')
        shard = bisect.bisect_right(self._starts, index) - 1
        return shard, index - self._starts[shard]

    def sample(self, index: int, keys: list[str] | None = None) -> dict[str, np.ndarray]:
        shard, row = self.locate(index)
        handle = self._handle(shard)
        return {k: handle.get_slice(k)[row:row + 1][0] for k in (keys or self.keys)}

    def column(self, key: str) -> np.ndarray:
        """One key over the whole data set (small keys: actions, indices)."""
        return np.concatenate([self._handle(i).get_tensor(key) for i in range(len(self.shards))])

    def __getstate__(self):              # DataLoader workers reopen their own handles
        state = dict(self.__dict__)
        state['_handles'] = {}
        return state


class LazyColumn:
    """One key of a data set split, read when indexed: `col[idx]` -> a torch tensor of those
    rows (gathered shard by shard; nothing else is held in memory)."""

    def __init__(self, arrays: ShardedArrays, key: str, samples: np.ndarray,
                 dtype: str | None = None):
        if key not in arrays.keys:
            raise ParameterError(f'{arrays.root}: no {key!r} in the data set; it has '
                                 f'{arrays.keys}')
        self.arrays, self.key = arrays, key
        self.samples = np.asarray(samples, dtype=np.int64)
        self.dtype = dtype
        self.shape = (len(self.samples),) + tuple(arrays.manifest['features'][key]['shape'])

    def __len__(self) -> int:
        return len(self.samples)

    def dim(self) -> int:
        return len(self.shape)

    def __getitem__(self, index):
        import torch
        idx = index.numpy() if hasattr(index, 'numpy') else np.asarray(index)
        rows = self.arrays.rows(self.key, self.samples[idx])
        t = torch.from_numpy(np.ascontiguousarray(rows))
        return t.to(getattr(torch, self.dtype)) if self.dtype else t

    def float(self):
        """The whole column in memory (what saliency statistics need; avoid on huge sets)."""
        import torch
        return self[np.arange(len(self))].to(torch.float32)


def _torch_dataset_base():
    import torch.utils.data
    return torch.utils.data.Dataset


class QailDataset:
    """A torch Dataset over one split of a qail_ros data set (torch imported on creation).

    Args:
        root: the data set directory.
        split: 'train', 'val' or 'all'.
        keys: which arrays to return (default: all features).
        transform: optional callable applied to each sample dict (of torch tensors).
    """

    def __new__(cls, *args, **kwargs):
        # Become a real torch Dataset subclass the first time one is made (lazy torch import).
        base = _torch_dataset_base()
        if not issubclass(cls, base):
            cls = type(cls.__name__, (cls, base), {'__module__': cls.__module__})
        return object.__new__(cls)

    def __init__(self, root: str | Path, split: str = 'train', keys: list[str] | None = None,
                 transform=None):
        self.arrays = ShardedArrays(root)
        self.manifest = self.arrays.manifest
        if split not in ('train', 'val', 'all'):
            raise ParameterError(f"split must be 'train', 'val' or 'all', not '{split}'")
        unknown = sorted(set(keys or []) - set(self.arrays.keys))
        if unknown:
            raise ParameterError(f'keys {unknown} are not in the data set; it has '
                                 f'{self.arrays.keys}')
        self.keys = list(keys or self.arrays.keys)
        self.split = split
        self.transform = transform
        wanted = {e['index'] for e in self.manifest['episodes']
                  if split == 'all' or e['split'] == split}
        self.indices = np.concatenate([
            np.arange(e['first_sample'], e['first_sample'] + e['frames'])
            for e in self.manifest['episodes'] if e['index'] in wanted] or [np.zeros(0, int)])

    @property
    def stats(self) -> dict[str, Any]:
        return self.manifest['stats']

    @property
    def tasks(self) -> list[str]:
        return self.manifest['tasks']

    def __len__(self) -> int:
        return int(len(self.indices))

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch
        sample = self.arrays.sample(int(self.indices[i]), self.keys)
        out = {k: torch.from_numpy(np.array(v)) for k, v in sample.items()}
        return self.transform(out) if self.transform is not None else out
