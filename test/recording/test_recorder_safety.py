"""The recorder never fails silently: a full disk and a write error stop it with an error, and
the counts it reports are what an independent reader (the mcap package, rosbags' AnyReader)
finds in the bags."""
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from qail_ros import messages as m
from qail_ros.errors import BagError, ParameterError
from qail_ros.recording import BagWriterThread

ROOT = Path(__file__).resolve().parents[2]


def mcap_messages(path: Path) -> int:
    """Messages an independent reader finds in a bag's mcap file, up to where it is cut."""
    from mcap.records import Message
    from mcap.stream_reader import StreamReader
    count = 0
    with open(next(path.glob('*.mcap')), 'rb') as f:
        with contextlib.suppress(Exception):   # a file cut by ENOSPC ends mid-record
            for record in StreamReader(f).records:
                count += isinstance(record, Message)
    return count


def _image(i: int):
    data = np.full(30000, i % 251, dtype=np.uint8)
    return m.new('sensor_msgs/msg/Image', height=100, width=100, encoding='rgb8', step=300,
                 data=data)


def test_disk_full_written_count_is_what_the_bag_holds(small_filesystem):
    with small_filesystem(3) as fs:
        errors = []
        writer = BagWriterThread(on_error=errors.append, chunk_size=1 << 18).start()
        writer.open_bag(fs / 'bag', {}, {'/img': ('sensor_msgs/msg/Image', None)})
        for i in range(150):                        # 4.5 MB into 3 MB
            assert writer.put('/img', _image(i), i + 1)
        assert writer.stop()
        st = writer.stats
        assert errors and 'disk is full' in errors[0]
        held = mcap_messages(fs / 'bag')
        assert 0 < held < 150
        assert st.written == held, (st.written, held)     # the unflushed chunk is not counted
        assert st.written + st.failed == 150


def test_min_free_mb_cannot_be_zero():
    from qail_ros.nodes.fp_recorder import FpRecorder
    with pytest.raises(ParameterError, match='min_free_mb must be > 0'):
        FpRecorder(cli_args=['--ros-args', '-p', 'min_free_mb:=0.0'])


def test_low_disk_closes_the_episode_and_stops_with_an_error(runtime, tmp_path):
    from rosbags.highlevel import AnyReader

    from qail_ros.nodes.camera_source import CameraSource
    from qail_ros.nodes.fp_recorder import FpRecorder
    rec = FpRecorder(cli_args=['--ros-args', '-p', f'output_dir:={tmp_path}', '-p',
                               'min_free_mb:=100.0', '-p', 'report_period_s:=0.0'])
    rec.on_configure()
    cam = CameraSource(cli_args=['--ros-args', '-p', 'width:=32', '-p', 'height:=24', '-p',
                                 'rate_hz:=200.0', '-p', 'log_period_s:=0.0'])
    cam.on_configure()
    rec.on_activate()
    cam.on_activate()
    runtime.spin_until(lambda: rec.received['/image_raw'] >= 20, timeout_s=20)
    rec.free_mb = lambda: 50.0                      # the disk is filling up
    with pytest.raises(BagError, match='min_free_mb 100.*recording stopped before the disk'):
        runtime.spin(duration_s=2.0)
    assert not rec.recording and rec.episodes_done == 1
    writer = rec.writer
    for node in (cam, rec):
        node.on_deactivate()
        node.on_cleanup()
        node.destroy_node()
    bags = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert len(bags) == 1
    with AnyReader(bags) as reader:
        held = sum(1 for _ in reader.messages())
    assert held == writer.stats.written > 20
    assert held == sum(rec.recorded.values()) + 2   # + the episode's start / end facts


def test_reported_count_equals_an_independent_reader_after_sigterm(tmp_path):
    """A recorder process (camera at 200 Hz, a new bag part every 0.5 s) stopped by SIGTERM:
    the 'N messages written' it logs is what rosbags' AnyReader finds in all its bags."""
    from rosbags.highlevel import AnyReader
    env = dict(os.environ, PYTHONPATH=str(ROOT), QAIL_ROS_TRANSPORT='none',
               QAIL_ROS_RUNTIME='embedded')
    script = (
        'import sys\n'
        'from qail_ros.nodes.camera_source import CameraSource\n'
        'from qail_ros.nodes.fp_recorder import FpRecorder\n'
        'from qail_ros.runtime import nodes_main\n'
        'sys.exit(nodes_main([(FpRecorder, sys.argv[1:]), (CameraSource, ["--ros-args", "-p", '
        '"width:=64", "-p", "height:=48", "-p", "rate_hz:=200.0", "-p", "log_period_s:=0.0"])],'
        ' args=[]))\n')
    proc = subprocess.Popen([sys.executable, '-c', script, '--ros-args', '-p',
                             f'output_dir:={tmp_path}', '-p', 'split_duration_s:=0.5', '-p',
                             'min_free_mb:=1.0'], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(list(tmp_path.iterdir())) < 3:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    said = re.search(r'(\d+) messages written .* to (\d+) bags', err)
    assert said, err
    bags = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert len(bags) == int(said.group(2)) >= 3
    with AnyReader(bags) as reader:
        held = sum(1 for _ in reader.messages())
    assert held == int(said.group(1)) > 50
