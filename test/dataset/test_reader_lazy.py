"""Lazy, shard-by-shard reading of a data set (LazyColumn) and training on it."""
import json

import numpy as np
import pytest
import torch

from qail_ros.dataset.builder import FORMAT, MANIFEST
from qail_ros.dataset.reader import LazyColumn, ShardedArrays


def _write_dataset(root, episodes=(30, 25, 40, 35), shard_frames=16, obs_dim=5, seed=0):
    """A data set in the builder's layout: many small shards, episodes across shard borders."""
    from safetensors.numpy import save_file
    g = np.random.default_rng(seed)
    n = sum(episodes)
    obs = g.normal(size=(n, obs_dim)).astype(np.float32)
    act = np.tanh(obs[:, :2] * 0.7).astype(np.float32)
    (root / 'data').mkdir(parents=True)
    shards = []
    for k, start in enumerate(range(0, n, shard_frames)):
        stop = min(n, start + shard_frames)
        name = f'data/shard-{k:05d}.safetensors'
        save_file({'observation.state': obs[start:stop], 'action': act[start:stop]},
                  str(root / name))
        shards.append({'file': name, 'first_sample': start, 'samples': stop - start})
    eps, first = [], 0
    for i, frames in enumerate(episodes):
        eps.append({'index': i, 'first_sample': first, 'frames': frames,
                    'split': 'val' if i == 1 else 'train'})
        first += frames
    manifest = {'format': FORMAT, 'frames': n, 'shards': shards, 'episodes': eps,
                'features': {'observation.state': {'dtype': 'float32', 'shape': [obs_dim]},
                             'action': {'dtype': 'float32', 'shape': [2]}},
                'stats': {}, 'tasks': []}
    (root / MANIFEST).write_text(json.dumps(manifest))
    return obs, act, eps


def test_rows_are_gathered_shard_by_shard_with_few_files_open(tmp_path):
    obs, _, _ = _write_dataset(tmp_path)
    arrays = ShardedArrays(tmp_path, max_open=2)
    idx = np.random.default_rng(1).permutation(len(obs))[:70]   # across all 9 shards
    np.testing.assert_array_equal(arrays.rows('observation.state', idx), obs[idx])
    assert len(arrays._handles) <= 2
    with pytest.raises(IndexError):
        arrays.rows('observation.state', np.array([len(obs)]))


def test_lazy_column_indexes_like_a_tensor(tmp_path):
    obs, _, eps = _write_dataset(tmp_path)
    train = np.concatenate([np.arange(e['first_sample'], e['first_sample'] + e['frames'])
                            for e in eps if e['split'] == 'train'])
    col = LazyColumn(ShardedArrays(tmp_path), 'observation.state', train, 'float32')
    assert col.shape == (len(train), 5) and col.dim() == 2 and len(col) == len(train)
    idx = torch.tensor([0, 57, 3, len(train) - 1])
    assert torch.equal(col[idx], torch.from_numpy(obs[train[idx.numpy()]]))
    assert torch.equal(col.float(), torch.from_numpy(obs[train]))


def test_trainer_on_lazy_data_matches_in_memory_data(tmp_path):
    from qail_ros.physics.policy import MLPPolicy
    from qail_ros.qail.config import TrainConfig
    from qail_ros.qail.data import ImitationData
    from qail_ros.qail.trainer import QAILTrainer
    from qail_ros.training.distributed import Dist, episode_shard
    _write_dataset(tmp_path)
    lazy = ImitationData.from_dataset(tmp_path, 'train')
    eager = ImitationData.from_dataset(tmp_path, 'train', lazy=False)
    assert lazy.lazy and not eager.lazy and len(lazy) == len(eager) == 105
    torch.manual_seed(0)
    teacher = MLPPolicy(5, 2, hidden=32, layers=2).eval()
    cfg = TrainConfig(method='qail_qbc', bits='w4a4', steps=6, batch_size=32, progress=False,
                      calib_samples=64, log_every=1)
    a = QAILTrainer(teacher, cfg, lazy).train().history
    b = QAILTrainer(teacher, cfg, eager).train().history
    assert [r['loss'] for r in a] == [r['loss'] for r in b]
    # a torchrun rank can take whole episodes of its own instead
    lengths = ImitationData.episode_lengths(tmp_path, 'train')
    mine = [episode_shard(lengths, Dist(rank=r, world=2)) for r in (0, 1)]
    assert sorted(mine[0] + mine[1]) == [0, 1, 2] and mine[0] and mine[1]
    part = ImitationData.from_dataset(tmp_path, 'train', episodes=mine[1])
    assert len(part) == sum(lengths[i] for i in mine[1])
