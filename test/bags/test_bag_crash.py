"""Crash safety: writers killed with SIGKILL / SIGTERM, and mcap files cut at every kind of place.

The cut tests are deterministic (a closed bag truncated at chosen offsets); the kill tests run
test/bags/crash_writer.py in a subprocess and kill it mid-write.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from qail_ros import image as im
from qail_ros import messages as m
from qail_ros.bag import BagReader, BagWriter, recover_bag, scan_mcap
from qail_ros.errors import BagError

WRITER = Path(__file__).with_name('crash_writer.py')
ROOT = Path(__file__).resolve().parents[2]


def _independent_count(bag_dir: Path) -> tuple[int, int]:
    """Message counts seen by rosbags' Reader and by the mcap package's (seeking) reader."""
    from rosbags.rosbag2 import Reader
    with Reader(bag_dir) as reader:
        n_rosbags = sum(1 for _ in reader.messages())
    n_mcap = 0
    mcaps = list(bag_dir.glob('*.mcap'))
    if mcaps:
        from mcap.reader import make_reader
        from mcap_ros2.decoder import DecoderFactory
        with mcaps[0].open('rb') as f:
            reader = make_reader(f, decoder_factories=[DecoderFactory()])
            n_mcap = sum(1 for _ in reader.iter_decoded_messages())
    return n_rosbags, n_mcap


def _snapshot(bag_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(bag_dir.iterdir())}


def _run_writer(bag: Path, storage: str, min_flushed: int, sig: int,
                chunk_size: int = 1 << 20) -> tuple[int, int]:
    """Start the writer, wait until `min_flushed` messages are flushed, send `sig`.

    Returns (written, flushed) as last reported before the signal.
    """
    env = {**os.environ, 'PYTHONPATH': f'{ROOT}{os.pathsep}{os.environ.get("PYTHONPATH", "")}'}
    proc = subprocess.Popen([sys.executable, str(WRITER), str(bag), storage, '200', '64', '48',
                             '0.25', str(chunk_size)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            text=True, env=env)
    written = flushed = 0
    deadline = time.monotonic() + 30
    try:
        for line in proc.stdout:
            _w, w, _f, f = line.split()
            written, flushed = int(w), int(f)
            # kill while messages are pending (written > flushed), so a loss is possible
            if flushed >= min_flushed and (written > flushed + 2 or chunk_size < 1000):
                break
            assert time.monotonic() < deadline, 'writer made no progress'
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [ln.split() for ln in out.splitlines() if ln.startswith('written')]
    if lines:     # lines printed between our last read and the signal
        written, flushed = int(lines[-1][1]), int(lines[-1][3])
    assert written >= min_flushed, err
    return written, flushed


def _check_frames(messages):
    """Every recovered frame is intact: its pixels and stamp match its index."""
    for i, (_topic, stamp, msg) in enumerate(messages):
        assert stamp == 1_000_000_000 + i * 1_000_000
        frame = im.to_numpy(msg)
        assert frame.shape == (48, 64, 3)
        assert (frame == i % 256).all()


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_sigkill_mid_write_recovers_every_flushed_message(tmp_path, storage):
    bag = tmp_path / 'killed'
    written, flushed = _run_writer(bag, storage, min_flushed=20, sig=signal.SIGKILL)
    assert not (bag / 'metadata.yaml').exists()        # the writer really died mid-write
    with BagReader(bag) as reader:
        assert reader.recovered
        got = list(reader.messages())
    assert flushed <= len(got) <= written
    _check_frames(got)
    if storage == 'mcap':
        assert reader.custom_metadata == {'writer': 'crash_writer'}   # kept in the mcap file
    before = _snapshot(bag)
    report = recover_bag(bag, quiet_s=0)
    assert _snapshot(bag) == before                    # the original is untouched
    out = Path(report['output'])
    assert report['recovered'] == len(got) and out != bag
    assert (out / 'metadata.yaml').exists()
    n_rosbags, n_mcap = _independent_count(out)
    assert n_rosbags == len(got)
    if storage == 'mcap':
        assert n_mcap == len(got)
    with BagReader(out) as reader:
        assert not reader.recovered
        assert reader.message_count == len(got)
        _check_frames(list(reader.messages()))


@pytest.mark.parametrize('sig,chunk_size', [(signal.SIGTERM, 1 << 20), (signal.SIGINT, 1)])
def test_sigterm_and_ctrl_c_close_the_bag(tmp_path, sig, chunk_size):
    """chunk_size 1 closes a chunk per message, so the signal often lands in close_chunk."""
    bag = tmp_path / 'terminated'
    written, _flushed = _run_writer(bag, 'mcap', min_flushed=10, sig=sig, chunk_size=chunk_size)
    assert (bag / 'metadata.yaml').exists()
    with BagReader(bag) as reader:
        assert not reader.recovered
        assert reader.message_count == written      # nothing lost on a clean stop
    assert _independent_count(bag) == (written, written)


def _closed_bag(path: Path, chunk_size: int) -> Path:
    with BagWriter(path, chunk_size=chunk_size, flush_interval_s=0,
                   custom_metadata={'k': 'v'}) as bag:
        bag.add_topic('/image_raw', 'sensor_msgs/msg/Image')
        for i in range(20):
            stamp = 1_000_000_000 + i * 1_000_000
            frame = np.full((48, 64, 3), i, np.uint8)
            bag.write('/image_raw', im.from_numpy(frame, 'rgb8', stamp=stamp), stamp)
            bag.write('/tick', m.new('std_msgs/msg/UInt32', data=i), stamp)
    return path


@pytest.mark.parametrize('where', ['inside_chunk_3', 'after_chunk_3', 'inside_index_3',
                                   'summary', 'header_only'])
def test_cut_file_reads_every_complete_chunk(tmp_path, where):
    bag = _closed_bag(tmp_path / 'cut', chunk_size=20_000)   # ~2 frames per chunk
    mcap = bag / 'cut.mcap'
    full = scan_mcap(mcap)
    assert full.complete and len(full.chunks) >= 6
    c3 = full.chunks[3]
    cut_at, keep_chunks = {
        'inside_chunk_3': (c3.start + c3.length // 2, 3),
        'after_chunk_3': (c3.start + c3.length, 4),
        'inside_index_3': (c3.start + c3.length + 5, 4),
        'summary': (full.good_end + 40, len(full.chunks)),
        'header_only': (30, 0),
    }[where]
    data = mcap.read_bytes()
    mcap.write_bytes(data[:cut_at])
    (bag / 'metadata.yaml').unlink()
    expected = sum(len(c.messages) for c in full.chunks[:keep_chunks])
    if where == 'inside_chunk_3':   # the whole messages of the cut chunk are kept too
        salvaged = scan_mcap(mcap).salvaged
        assert 0 < salvaged < len(c3.messages)
        expected += salvaged

    if keep_chunks == 0:
        with BagReader(bag) as reader:
            assert reader.message_count == 0 and list(reader) == []
    else:
        with BagReader(bag) as reader:
            assert reader.recovered == (where != 'summary')
            got = list(reader.messages())
        assert len(got) == expected
        frames = [g for g in got if g.topic == '/image_raw']
        _check_frames(frames)
        ticks = [g.msg.data for g in got if g.topic == '/tick']
        assert ticks == list(range(len(ticks)))
        assert len(frames) - 1 <= len(ticks) <= len(frames)   # a tick follows its frame
    report = recover_bag(bag, quiet_s=0)
    assert report['recovered'] == expected
    out = Path(report['output'])
    assert _independent_count(out) == (expected, expected)
    with BagReader(out) as reader:
        assert not reader.recovered and reader.message_count == expected
        # custom metadata is written right after the mcap header, so only a cut inside the
        # first few hundred bytes loses it
        assert reader.custom_metadata == ({} if where == 'header_only' else {'k': 'v'})


def test_flush_interval_bounds_what_a_quiet_writer_holds(tmp_path):
    """A message written and then left alone reaches the file within the flush interval."""
    with BagWriter(tmp_path / 'quiet', flush_interval_s=0.2) as bag:
        bag.write('/x', m.new('std_msgs/msg/String', data='a'), 1)
        assert bag.flushed_count == 0
        deadline = time.monotonic() + 5
        while bag.flushed_count < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert bag.flushed_count == 1
        assert scan_mcap(tmp_path / 'quiet' / 'quiet.mcap').message_count == 1


def test_recover_errors(tmp_path):
    with pytest.raises(BagError, match='no bag at'):
        recover_bag(tmp_path / 'nothing')
    (tmp_path / 'd').mkdir()
    with pytest.raises(BagError, match='no .mcap or .db3'):
        recover_bag(tmp_path / 'd', quiet_s=0)
