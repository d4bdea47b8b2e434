"""`qail-ros bag info` and `qail-ros bag recover` through the real CLI entry point."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

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


def _age(path, seconds=60):
    old = time.time() - seconds
    for p in [path, *path.iterdir()]:
        os.utime(p, (old, old))


def test_recover_via_cli(tmp_path, capsys):
    path = _bag(tmp_path / 'crashed', close=False)
    assert not (path / 'metadata.yaml').exists()
    assert main(['bag', 'info', str(path)]) == 0
    assert 'NOT CLOSED' in capsys.readouterr().out
    # just written: it may still be being written, so recover refuses (unless --force)
    assert main(['bag', 'recover', str(path)]) == 2
    assert 'changed 0.' in capsys.readouterr().err
    _age(path)
    before = sorted(p.name for p in path.iterdir())
    assert main(['bag', 'recover', str(path), '--json']) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert list(report)[:4] == ['recovered', 'expected', 'lost', 'output']
    assert report['recovered'] == 12 and report['expected'] is None and report['lost'] is None
    out = Path(report['output'])
    assert out == path.with_name('crashed.recovered')
    assert sorted(p.name for p in path.iterdir()) == before     # original untouched
    from rosbags.highlevel import AnyReader
    with AnyReader([out]) as reader:
        assert sum(1 for _ in reader.messages()) == 12
    from rosbags.rosbag2 import Reader
    with Reader(out) as reader:
        assert reader.message_count == 12
        assert reader.storage.metadata.custom == {'task': 'stack'}
    _age(out)
    assert main(['bag', 'reindex', str(out)]) == 0
    assert 'none: the bag is complete' in capsys.readouterr().out


def test_recover_refuses_a_bag_a_process_has_open(tmp_path, capsys):
    path = _bag(tmp_path / 'open', close=False)
    _age(path)
    holder = subprocess.Popen([sys.executable, '-c', 'import sys, time; f = open(sys.argv[1], '
                               '"rb"); print("ok", flush=True); time.sleep(30)',
                               str(path / 'open.mcap')], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'ok'
        assert main(['bag', 'recover', str(path)]) == 2
        err = capsys.readouterr().err
        assert f'open in process(es) [{holder.pid}]' in err and '--force' in err
        assert main(['bag', 'recover', str(path), '--force', '--json']) == 0
        assert json.loads(capsys.readouterr().out.splitlines()[-1])['recovered'] == 12
    finally:
        holder.kill()
        holder.wait()


def test_errors_are_one_line(tmp_path, capsys):
    assert main(['bag', 'info', str(tmp_path / 'missing')]) == 2
    assert 'qail-ros: error: no bag at' in capsys.readouterr().err
    assert main(['bag']) == 2
