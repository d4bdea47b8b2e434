"""`qail-ros bag info` and `qail-ros bag recover` through the real CLI entry point."""
import json

import numpy as np

from qail_ros import image as im
from qail_ros import messages as m
from qail_ros.bag import BagWriter
from qail_ros.cli import main


def _bag(path, close=True):
    bag = BagWriter(path, custom_metadata={'task': 'stack'}, chunk_size=4000,
                    flush_interval_s=0).open()
    for i in range(6):
        bag.write('/image_raw', im.from_numpy(np.full((20, 30, 3), i, np.uint8), 'rgb8'),
                  1_000_000_000 + i * 100_000_000)
        bag.write('/note', m.new('std_msgs/msg/String', data=str(i)),
                  1_000_000_000 + i * 100_000_000)
    if close:
        bag.close()
    else:
        bag.flush()
        bag._writer = None        # drop it unclosed, as a crash would
        bag._stop.set()
    return path


def test_info_prints_what_ros2_bag_info_prints(tmp_path, capsys):
    path = _bag(tmp_path / 'b')
    assert main(['bag', 'info', str(path)]) == 0
    out = capsys.readouterr().out
    assert 'b.mcap' in out and 'rosbag2 format 8' in out
    assert 'Duration:          0.500 s' in out and 'Messages:          12' in out
    assert 'task=stack' in out
    assert '/image_raw  sensor_msgs/msg/Image        6  reliable, volatile, keep_last 10' in out
    assert main(['bag', 'info', str(path), '--json']) == 0
    data = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert data['message_count'] == 12 and not data['recovered']
    assert {t['name']: t['count'] for t in data['topics']} == {'/image_raw': 6, '/note': 6}


def test_recover_via_cli(tmp_path, capsys):
    path = _bag(tmp_path / 'crashed', close=False)
    assert not (path / 'metadata.yaml').exists()
    assert main(['bag', 'info', str(path)]) == 0
    assert 'NOT CLOSED' in capsys.readouterr().out
    assert main(['bag', 'recover', str(path)]) == 0
    out = capsys.readouterr().out
    assert 'repaired the mcap file and wrote metadata.yaml' in out and '12 messages kept' in out
    from rosbags.rosbag2 import Reader
    with Reader(path) as reader:
        assert reader.message_count == 12
        assert reader.storage.metadata.custom == {'task': 'stack'}
    assert main(['bag', 'reindex', str(path)]) == 0
    assert 'none: the bag is complete' in capsys.readouterr().out


def test_errors_are_one_line(tmp_path, capsys):
    assert main(['bag', 'info', str(tmp_path / 'missing')]) == 2
    assert 'qail-ros: error: no bag at' in capsys.readouterr().err
    assert main(['bag']) == 2
