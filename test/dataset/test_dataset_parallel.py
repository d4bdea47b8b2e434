"""`dataset build --workers N`: the same data set as one process, read by a process pool."""
import json

import numpy as np

from qail_ros.dataset import build_dataset
from qail_ros.dataset.reader import ShardedArrays

from test_dataset import _write_episode


def _manifest(root):
    man = json.loads((root / 'manifest.json').read_text())
    man.pop('created')
    return man


def test_parallel_build_equals_the_serial_build(tmp_path):
    rec = tmp_path / 'rec'
    rec.mkdir()
    for i in range(4):
        _write_episode(rec / f'ep{i}', i, [i + 1, i + 2, i + 3], frames=4)
    build_dataset([rec], tmp_path / 'one', shard_frames=5, workers=1)
    build_dataset([rec], tmp_path / 'two', shard_frames=5, workers=2)
    assert _manifest(tmp_path / 'one') == _manifest(tmp_path / 'two')
    a, b = ShardedArrays(tmp_path / 'one'), ShardedArrays(tmp_path / 'two')
    assert len(a) == 12
    for key in a.keys:
        np.testing.assert_array_equal(a.column(key), b.column(key))
