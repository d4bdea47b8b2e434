"""`ImitationData`: the fine-tuning set D_QAIL = D_E ∪ D_FP as tensors with sample ids.

Every sample keeps a stable integer id (the key of the SIS cache) and its source: 0 = an expert
demonstration (D_E), 1 = a rollout of the FP policy (D_FP), 2 = a state the quantized student
visited (on-policy QBC; its action label is the teacher's). LPPD trains on source 1 only.
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
        self.obs = torch.as_tensor(self.obs)
        self.act = torch.as_tensor(self.act)
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
        return ImitationData(self.obs[index], self.act[index], self.ids[index],
                             self.source[index])

    @classmethod
    def concat(cls, parts: list[ImitationData]) -> ImitationData:
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
