"""OpenVLA's action tokens and un-normalisation (numpy only), as its predict_action does them.

Discretisation: `n_bins` (256) uniform bin edges over [-1, 1]; a normalised action value a is
clipped to [-1, 1] and digitised (numpy.digitize: d in 1..n_bins, d = i + 1 for
edges[i] <= a < edges[i + 1], d = n_bins at a = 1), and its token id is
`vocab_size - d`: the last n_bins ids of the tokenizer's vocabulary (31744..31999 for
Llama-2's 32000). Decoding inverts it: d = vocab_size - id, index = clip(d - 1, 0, n_bins - 2),
value = bin_centers[index] (n_bins - 1 centres: the top edge's d = 256 lands in the last
centre, and any non-action id is clipped into range, as OpenVLA does).

Un-normalisation with the chosen data set's statistics (`norm_stats[unnorm_key]['action']`):
where mask (default all True) a -> 0.5 (a + 1) (q99 - q01) + q01, elsewhere a unchanged
(OpenVLA's gripper dimension: mask False, the value stays in [0, 1] as the data set stores it).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from qail_ros.openvla.config import OpenVLAError

__all__ = ['ActionTokenizer', 'select_stats', 'unnormalize', 'normalize']


class ActionTokenizer:
    """Continuous normalised actions <-> token ids of the last `n_bins` vocabulary entries."""

    def __init__(self, vocab_size: int, n_bins: int = 256, low: float = -1.0, high: float = 1.0):
        if n_bins < 2 or vocab_size < n_bins:
            raise OpenVLAError(f'action tokenizer: need 2 <= n_bins ({n_bins}) <= vocab_size '
                               f'({vocab_size})')
        self.vocab_size, self.n_bins = int(vocab_size), int(n_bins)
        self.low, self.high = float(low), float(high)
        self.bins = np.linspace(low, high, n_bins)
        self.bin_centers = (self.bins[:-1] + self.bins[1:]) / 2.0

    @property
    def first_token_id(self) -> int:
        """Lowest action token id (bin d = n_bins)."""
        return self.vocab_size - self.n_bins

    def bin_token_ids(self) -> np.ndarray:
        """Token id of each bin index k = d - 1 (k = 0 is the lowest value)."""
        return self.vocab_size - 1 - np.arange(self.n_bins)

    def discretize(self, action: np.ndarray) -> np.ndarray:
        """d in 1..n_bins per value (numpy.digitize of the clipped value)."""
        a = np.clip(np.asarray(action, dtype=np.float64), self.low, self.high)
        return np.digitize(a, self.bins)

    def encode(self, action: np.ndarray) -> np.ndarray:
        """Normalised actions -> token ids."""
        return (self.vocab_size - self.discretize(action)).astype(np.int64)

    def decode(self, token_ids: np.ndarray) -> np.ndarray:
        """Token ids -> normalised actions (bin centres)."""
        d = self.vocab_size - np.asarray(token_ids, dtype=np.int64)
        idx = np.clip(d - 1, 0, self.bin_centers.shape[0] - 1)
        return self.bin_centers[idx]

    def is_action_token(self, token_ids: np.ndarray) -> np.ndarray:
        t = np.asarray(token_ids)
        return (t >= self.first_token_id) & (t < self.vocab_size)


def select_stats(norm_stats: dict[str, Any], unnorm_key: str | None) -> tuple[str, dict]:
    """(key, norm_stats[key]['action']); the key may be omitted when there is only one."""
    keys = sorted(norm_stats)
    if not unnorm_key:
        if len(keys) != 1:
            raise OpenVLAError(f'the checkpoint has statistics of {len(keys)} data sets: set '
                               f'unnorm_key to one of {keys}')
        unnorm_key = keys[0]
    if unnorm_key not in norm_stats:
        raise OpenVLAError(f'unnorm_key {unnorm_key!r} is not in the checkpoint\'s norm_stats; '
                           f'choose one of {keys}')
    entry = norm_stats[unnorm_key]
    stats = entry.get('action') if isinstance(entry, dict) else None
    if not stats or 'q01' not in stats or 'q99' not in stats:
        raise OpenVLAError(f'norm_stats[{unnorm_key!r}] has no action q01/q99 statistics')
    return unnorm_key, stats


def _mask(stats: dict) -> np.ndarray:
    q01 = np.asarray(stats['q01'], dtype=np.float64)
    return np.asarray(stats.get('mask', np.ones_like(q01, dtype=bool)), dtype=bool)


def unnormalize(normalized: np.ndarray, stats: dict) -> np.ndarray:
    """OpenVLA's un-normalisation: masked dims from [-1, 1] to [q01, q99], others unchanged."""
    a = np.asarray(normalized, dtype=np.float64)
    high, low = np.asarray(stats['q99'], np.float64), np.asarray(stats['q01'], np.float64)
    if a.shape[-1] != low.shape[0]:
        raise OpenVLAError(f'action has {a.shape[-1]} values, the statistics {low.shape[0]}')
    return np.where(_mask(stats), 0.5 * (a + 1.0) * (high - low) + low, a)


def normalize(action: np.ndarray, stats: dict) -> np.ndarray:
    """The inverse (training-data side, clipped to [-1, 1] where masked); for tests and QBC."""
    a = np.asarray(action, dtype=np.float64)
    high, low = np.asarray(stats['q99'], np.float64), np.asarray(stats['q01'], np.float64)
    span = np.where(high - low == 0, 1.0, high - low)
    return np.where(_mask(stats), np.clip(2.0 * (a - low) / span - 1.0, -1.0, 1.0), a)
