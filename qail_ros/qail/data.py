"""`ImitationData`: the fine-tuning set D_QAIL = D_E ∪ D_FP as tensors with sample ids.

Every sample keeps a stable integer id (the key of the SIS cache) and its source: 0 = an expert
demonstration (D_E), 1 = a rollout of the FP policy (D_FP), 2 = a state the quantized student
visited (on-policy QBC; its action label is the teacher's). LPPD trains on source 1 only.

`from_dataset(root, lazy=True)` keeps a built data set on disk: `obs` / `act` are
`qail_ros.dataset.reader.LazyColumn`s, read a batch at a time, shard by shard, so a data set
larger than memory trains (the trainer indexes them as it indexes tensors).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ['ImitationData', 'SOURCE_EXPERT', 'SOURCE_FP', 'SOURCE_STUDENT']

SOURCE_EXPERT, SOURCE_FP, SOURCE_STUDENT = 0, 1, 2


@dataclass
class ImitationData:
    """(obs, act) pairs with ids and sources; obs (N, ...) float, act (N, ...) float or long."""

    obs: Tensor
    act: Tensor
    ids: Tensor | None = None
    source: Tensor | None = None

    def __post_init__(self):
        self.obs = self.obs if _lazy(self.obs) else torch.as_tensor(self.obs)
        self.act = self.act if _lazy(self.act) else torch.as_tensor(self.act)
        n = self.obs.shape[0]
        if self.act.shape[0] != n:
            raise ValueError(f'{n} observations but {self.act.shape[0]} actions: one action per '
                             'observation')
        self.ids = (torch.arange(n, dtype=torch.int64) if self.ids is None
                    else torch.as_tensor(self.ids, dtype=torch.int64))
        self.source = (torch.full((n,), SOURCE_EXPERT, dtype=torch.int8) if self.source is None
                       else torch.as_tensor(self.source, dtype=torch.int8))
        if self.ids.shape != (n,) or self.source.shape != (n,):
            raise ValueError('ids and source need one entry per sample')

    def __len__(self) -> int:
        return int(self.obs.shape[0])

    def select(self, index: Tensor) -> ImitationData:
        if self.lazy:
            raise ValueError('a lazy ImitationData (on disk) cannot be subset in memory: '
                             'build it with from_dataset(..., episodes=...) instead')
        return ImitationData(self.obs[index], self.act[index], self.ids[index],
                             self.source[index])

    @property
    def lazy(self) -> bool:
        return _lazy(self.obs) or _lazy(self.act)

    @classmethod
    def from_dataset(cls, root, split: str = 'train', *, obs_key: str = 'observation.state',
                     act_key: str = 'action', source: int = SOURCE_FP, lazy: bool = True,
                     episodes: list[int] | None = None) -> ImitationData:
        """(obs, act) of a built data set's split (`qail-ros dataset build`); lazy = read on
        demand (`LazyColumn`), else loaded. `episodes`: only these episodes (positions in the
        split's episode list, e.g. `distributed.episode_shard` of a torchrun rank)."""
        import numpy as np
        from qail_ros.dataset.reader import LazyColumn, ShardedArrays
        from qail_ros.errors import ParameterError
        arrays = ShardedArrays(root)
        eps = [e for e in arrays.manifest['episodes'] if split == 'all' or e['split'] == split]
        if episodes is not None:
            eps = [eps[i] for i in episodes]
        if not eps:
            raise ParameterError(f'{root}: no {split} episodes (see `qail-ros dataset info`)')
        samples = np.concatenate([np.arange(e['first_sample'], e['first_sample'] + e['frames'])
                                  for e in eps])
        obs = LazyColumn(arrays, obs_key, samples, 'float32')
        act = LazyColumn(arrays, act_key, samples, 'float32')
        if not lazy:
            obs, act = obs[np.arange(len(obs))], act[np.arange(len(act))]
        return cls(obs, act, source=torch.full((len(samples),), source, dtype=torch.int8))

    @staticmethod
    def episode_lengths(root, split: str = 'train') -> list[int]:
        """Frames per episode of a split (for `distributed.episode_shard`)."""
        from qail_ros.dataset.reader import load_manifest
        return [e['frames'] for e in load_manifest(root)['episodes']
                if split == 'all' or e['split'] == split]

    @classmethod
    def concat(cls, parts: list[ImitationData]) -> ImitationData:
        if any(p.lazy for p in parts):
            raise ValueError('lazy data sets (on disk) cannot be concatenated in memory: '
                             'train on one data set, or load them with lazy=False')
        return cls(torch.cat([p.obs for p in parts]), torch.cat([p.act for p in parts]),
                   torch.cat([p.ids for p in parts]), torch.cat([p.source for p in parts]))

    @classmethod
    def from_sources(cls, expert: tuple | None = None, fp: tuple | None = None) -> ImitationData:
        """D_QAIL from (obs, act) of the expert and of the FP policy; ids 0..N-1 in that order."""
        parts = []
        for src, pair in ((SOURCE_EXPERT, expert), (SOURCE_FP, fp)):
            if pair is None:
                continue
            obs = torch.as_tensor(pair[0], dtype=torch.float32)
            act = torch.as_tensor(pair[1])
            act = act.float() if act.dtype.is_floating_point else act.long()
            parts.append(cls(obs, act, source=torch.full((len(obs),), src, dtype=torch.int8)))
        if not parts:
            raise ValueError('D_QAIL needs expert demonstrations, FP rollouts, or both')
        data = cls.concat(parts)
        data.ids = torch.arange(len(data), dtype=torch.int64)
        return data

    def counts(self) -> dict[str, int]:
        return {'expert': int((self.source == SOURCE_EXPERT).sum()),
                'fp': int((self.source == SOURCE_FP).sum()),
                'student': int((self.source == SOURCE_STUDENT).sum())}


def _lazy(x) -> bool:
    """A column read on demand (qail_ros.dataset.reader.LazyColumn) rather than a tensor."""
    return hasattr(x, 'arrays') and hasattr(x, 'samples')
