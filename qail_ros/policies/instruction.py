"""Instruction text -> fixed-size vector by feature hashing (no vocabulary, no model).

Tokens are lower-cased alphanumeric runs; each unigram and bigram is hashed with BLAKE2b (not
Python's `hash`, which changes between processes) into one of `dim` buckets with a sign bit, and
the vector is L2-normalised. The same text gives the same vector on every machine and run.
"""
from __future__ import annotations

import hashlib
import re

import numpy as np

__all__ = ['ACTION_LABELS', 'tokenize', 'hash_instruction']

#: Meaning of the 7 action dimensions (OpenVLA's convention): end-effector position and
#: orientation deltas, then the gripper.
ACTION_LABELS = ('dx', 'dy', 'dz', 'droll', 'dpitch', 'dyaw', 'gripper')

_TOKEN = re.compile(r'[a-z0-9]+')


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def hash_instruction(text: str, dim: int = 256) -> np.ndarray:
    """(dim,) float32, unit L2 norm (all zeros for an empty instruction)."""
    if dim <= 0:
        raise ValueError(f'dim must be > 0, not {dim}')
    tokens = tokenize(text)
    features = tokens + [f'{a} {b}' for a, b in zip(tokens, tokens[1:])]
    vec = np.zeros(dim, dtype=np.float32)
    for feature in features:
        digest = hashlib.blake2b(feature.encode('utf-8'), digest_size=8).digest()
        value = int.from_bytes(digest, 'little')
        vec[value % dim] += 1.0 if (value >> 63) & 1 else -1.0
    norm = float(np.linalg.norm(vec))
    return vec / norm if norm > 0 else vec
