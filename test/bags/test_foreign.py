"""Bags in the layouts other ROS 2 / ROS 1 tools write, built here from the format facts.

rosbag2 metadata versions 1-9 (rosbag2_storage's yaml.hpp: QoS added in 4, per-file metadata in
5, custom_data in 6, type_description_hash in 7, ros_distro in 8, QoS as a YAML list with enum
names in 9), Humble message definitions that differ from Jazzy's, sqlite3 bags whose QoS text
differs from metadata.yaml's (rosbag2's own talker test bags), split and compressed bags, ROS 1
bags, and truncated copies of each storage. Every bag `recover` writes is opened by rosbags'
AnyReader (which checks type hashes against the definitions) with the count recover reported.
"""
import os
import shutil
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from qail_ros import messages as m
from qail_ros.bag import BagReader, BagWriter, recover_bag
from qail_ros.errors import BagError

N = 12


def _yaml_load(path: Path) -> dict:
    from ruamel.yaml import YAML
    return YAML(typ='safe').load(path.read_text())['rosbag2_bagfile_information']


def _yaml_dump(path: Path, info: dict) -> None:
    import io

    from ruamel.yaml import YAML
    yaml = YAML(typ='safe')
    yaml.default_flow_style = False
    buf = io.StringIO()
    yaml.dump({'rosbag2_bagfile_information': info}, buf)
    path.write_text(buf.getvalue())


def _any_reader_count(bag: Path) -> int:
    from rosbags.highlevel import AnyReader
    with AnyReader([bag]) as reader:
        return sum(1 for _ in reader.messages())


def _old(path: Path, seconds: float = 60) -> Path:
    then = time.time() - seconds
    for p in [path, *path.iterdir()]:
        os.utime(p, (then, then))
    return path


def _write(path: Path, storage: str = 'mcap', version: int = 8, n: int = N,
           **kwargs) -> Path:
    with BagWriter(path, storage=storage, version=version, flush_interval_s=0,
                   custom_metadata={'task': 'foreign'}, **kwargs) as bag:
        for i in range(n):
            stamp = 1_000_000_000 + i * 10_000_000
            bag.write('/cmd', m.new('geometry_msgs/msg/Twist',
                                    linear=m.new('geometry_msgs/msg/Vector3', x=float(i))),
                      stamp)
            bag.write('/note', m.new('std_msgs/msg/String', data=f'n{i}'), stamp)
    return path


def _as_version(bag: Path, version: int) -> None:
    """Rewrite metadata.yaml (written as version 8 or 9) in the layout of `version`."""
    info = _yaml_load(bag / 'metadata.yaml')
    info['version'] = version
    for entry in info['topics_with_message_count']:
        tm = entry['topic_metadata']
        if version < 7:
            tm.pop('type_description_hash', None)
        if version < 4:
            tm.pop('offered_qos_profiles', None)
    if version < 4:      # before 4, paths were relative to the bag's parent
        info['relative_file_paths'] = [f'{bag.name}/{p}' for p in info['relative_file_paths']]
    for key, since in (('files', 5), ('custom_data', 6), ('ros_distro', 8)):
        if version < since:
            info.pop(key, None)
    if version < 3:
        info.pop('compression_format', None)
        info.pop('compression_mode', None)
    _yaml_dump(bag / 'metadata.yaml', info)


# ------------------------------------------------------------------------------------------
# metadata versions 1-9
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
@pytest.mark.parametrize('version', range(1, 10))
def test_every_metadata_version_reads_and_recovers_keeping_its_layout(tmp_path, version,
                                                                      storage):
    bag = _write(tmp_path / f'v{version}', storage=storage, version=9 if version == 9 else 8)
    _as_version(bag, version)
    original = (bag / 'metadata.yaml').read_text()
    with BagReader(bag) as reader:
        assert reader.version == version and reader.message_count == 2 * N
        got = [(t, msg) for t, _s, msg in reader.messages()]
    assert [msg.linear.x for t, msg in got if t == '/cmd'] == [float(i) for i in range(N)]
    report = recover_bag(_old(bag), force=True)
    out = Path(report['output'])
    assert (report['recovered'], report['expected'], report['lost']) == (2 * N, 2 * N, 0)
    assert (bag / 'metadata.yaml').read_text() == original        # untouched
    before, after = _yaml_load(bag / 'metadata.yaml'), _yaml_load(out / 'metadata.yaml')
    assert set(after) == set(before)
    for key in ('version', 'storage_identifier', 'relative_file_paths', 'custom_data',
                'compression_format', 'compression_mode', 'ros_distro'):
        assert after.get(key) == before.get(key), key
    for b, a in zip(before['topics_with_message_count'], after['topics_with_message_count']):
        assert a == b
    if version >= 4:
        assert _any_reader_count(out) == 2 * N


def test_version_9_writes_infinite_durations_as_jazzy_does(tmp_path):
    """rosbag2 (qos.cpp) writes rmw_time_t as is: RMW_DURATION_INFINITE is {9223372036,
    854775807} in version 9 too; {2147483647, 4294967295} is Foxy Fast-DDS's value."""
    bag = _write(tmp_path / 'v9', version=9)
    info = _yaml_load(bag / 'metadata.yaml')
    qos = info['topics_with_message_count'][0]['topic_metadata']['offered_qos_profiles']
    assert isinstance(qos, list) and qos[0]['history'] == 'keep_last'
    for key in ('deadline', 'lifespan', 'liveliness_lease_duration'):
        assert qos[0][key] == {'sec': 9223372036, 'nsec': 854775807}
    v8 = _yaml_load(_write(tmp_path / 'v8')
                    / 'metadata.yaml')['topics_with_message_count'][0]['topic_metadata']
    from rosbags.rosbag2.metadata import parse_qos
    assert parse_qos(v8['offered_qos_profiles'])[0].deadline.sec == 9223372036


# ------------------------------------------------------------------------------------------
# the bag's own definitions
# ------------------------------------------------------------------------------------------
def _humble_range_bag(path: Path, storage: str) -> Path:
    """sensor_msgs/msg/Range as Humble defines it (no `variance`, which Jazzy added)."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore
    humble = get_typestore(Stores.ROS2_HUMBLE)
    cls = humble.types['sensor_msgs/msg/Range']
    header = humble.types['std_msgs/msg/Header']
    stamp = humble.types['builtin_interfaces/msg/Time']
    plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
    with Writer(path, version=8, storage_plugin=plugin) as writer:
        conn = writer.add_connection('/range', 'sensor_msgs/msg/Range', typestore=humble)
        for i in range(N):
            msg = cls(header=header(stamp=stamp(sec=1, nanosec=i), frame_id='sonar'),
                      radiation_type=0, field_of_view=0.5, min_range=0.1, max_range=4.0,
                      range=1.0 + i)
            writer.write(conn, 1_000_000_000 + i, bytes(humble.serialize_cdr(
                msg, 'sensor_msgs/msg/Range')))
    return path


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_a_humble_definition_that_differs_from_jazzy_is_decoded_with_the_bags(
        tmp_path, storage, capsys):
    bag = _humble_range_bag(tmp_path / 'humble', storage)
    from rosbags.rosbag2 import Reader
    with Reader(bag) as raw:
        data = next(raw.messages())[2]
    with pytest.raises(Exception):          # what happened before: Jazzy's definition
        m.deserialize(data, 'sensor_msgs/msg/Range')
    with BagReader(bag) as reader:
        assert 'sensor_msgs/msg/Range' in reader.types.differs
        ranges = [msg.range for _t, _s, msg in reader.messages()]
        info = reader.topics['/range']
    assert ranges == [1.0 + i for i in range(N)]
    assert info.type_hash and info.type_hash != m.type_hash('sensor_msgs/msg/Range')
    from qail_ros.cli import main
    assert main(['bag', 'info', str(bag)]) == 0
    assert "own definitions (they differ from Jazzy's): sensor_msgs/msg/Range" in \
        capsys.readouterr().out
    # a crash: no metadata.yaml; recover takes the hash from the bag's own definition
    (bag / 'metadata.yaml').unlink()
    report = recover_bag(_old(bag))
    out = Path(report['output'])
    assert report['recovered'] == N
    assert _any_reader_count(out) == N       # AnyReader checks the hash against the def
    meta = _yaml_load(out / 'metadata.yaml')
    assert meta['topics_with_message_count'][0]['topic_metadata'][
        'type_description_hash'] == info.type_hash


def test_custom_types_from_the_bag_and_a_clear_error_where_a_vector_is_impossible(tmp_path):
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore
    store = get_typestore(Stores.ROS2_JAZZY)
    store.register(get_types_from_msg('float32 throttle\nfloat32 steer\nstring mode\n',
                                      'acme_msgs/msg/Drive'))
    cls = store.types['acme_msgs/msg/Drive']
    with Writer(tmp_path / 'acme', version=8) as writer:
        conn = writer.add_connection('/drive', 'acme_msgs/msg/Drive', typestore=store)
        for i in range(3):
            writer.write(conn, i + 1, bytes(store.serialize_cdr(
                cls(throttle=0.5, steer=0.1 * i, mode='auto'), 'acme_msgs/msg/Drive')))
    with BagReader(tmp_path / 'acme') as reader:
        msgs = [msg for _t, _s, msg in reader.messages()]
    assert [round(msg.steer, 3) for msg in msgs] == [0.0, 0.1, 0.2]
    from qail_ros.dataset.extract import to_vector
    with pytest.raises(BagError, match='acme_msgs/msg/Drive.*supported'):
        to_vector(msgs[0])


# ------------------------------------------------------------------------------------------
# sqlite3 QoS mismatch
# ------------------------------------------------------------------------------------------
def test_sqlite_qos_text_that_differs_from_metadata_is_not_read_as_empty(tmp_path):
    bag = _write(tmp_path / 'talker', storage='sqlite3')
    db = bag / 'talker.db3'
    foxy = ('- history: 3\n  depth: 0\n  reliability: 1\n  durability: 2\n  deadline:\n'
            '    sec: 2147483647\n    nsec: 4294967295\n  lifespan:\n    sec: 2147483647\n'
            '    nsec: 4294967295\n  liveliness: 1\n  liveliness_lease_duration:\n'
            '    sec: 2147483647\n    nsec: 4294967295\n  avoid_ros_namespace_conventions: '
            'false')
    conn = sqlite3.connect(db)
    conn.execute('UPDATE topics SET offered_qos_profiles = ?', (foxy,))
    conn.commit()
    conn.close()
    from rosbags.rosbag2 import Reader
    with Reader(bag) as raw:                 # the failure this guards against
        assert sum(1 for _ in raw.messages()) == 0
    with BagReader(bag) as reader:
        assert sum(1 for _ in reader.messages()) == 2 * N
    report = recover_bag(_old(bag), force=True)
    assert _any_reader_count(Path(report['output'])) == report['recovered'] == 2 * N


# ------------------------------------------------------------------------------------------
# split and compressed
# ------------------------------------------------------------------------------------------
def _split_bag(tmp_path: Path, parts: int = 3, file_zstd: bool = False, n: int = N) -> Path:
    """One bag of `parts` files, as rosbag2 splits (name_0.mcap, name_1.mcap, ...)."""
    bag = tmp_path / 'split'
    bag.mkdir()
    info = None
    files, topics = [], {}
    for k in range(parts):
        part = _write(tmp_path / f'p{k}', n=n)
        pinfo = _yaml_load(part / 'metadata.yaml')
        name = f'split_{k}.mcap'
        shutil.move(part / f'p{k}.mcap', bag / name)
        if file_zstd:
            from backports import zstd
            with (bag / name).open('rb') as fin, zstd.open(bag / f'{name}.zstd', 'wb') as fout:
                shutil.copyfileobj(fin, fout)
            (bag / name).unlink()
            name += '.zstd'
        files.append({'path': name, 'starting_time': pinfo['starting_time'],
                      'duration': pinfo['duration'], 'message_count': pinfo['message_count']})
        for entry in pinfo['topics_with_message_count']:
            topics.setdefault(entry['topic_metadata']['name'], entry)['message_count'] = \
                entry['message_count'] * (k + 1)
        info = info or pinfo
    info.update(relative_file_paths=[f['path'] for f in files], files=files,
                message_count=2 * n * parts,
                topics_with_message_count=list(topics.values()))
    if file_zstd:
        info.update(compression_format='zstd', compression_mode='FILE')
    _yaml_dump(bag / 'metadata.yaml', info)
    return bag


@pytest.mark.parametrize('file_zstd', [False, True])
def test_split_bag_reads_every_file_and_a_cut_last_file_recovers(tmp_path, file_zstd):
    n = 3000 if file_zstd else N       # zstd: several blocks, so a cut stream still decodes
    bag = _split_bag(tmp_path, file_zstd=file_zstd, n=n)
    with BagReader(bag) as reader:
        assert reader.message_count == 6 * n and len(reader.files) == 3
        assert sum(1 for _ in reader.messages()) == 6 * n
    last = sorted(bag.glob('split_2.*'))[0]
    data = last.read_bytes()
    if file_zstd:
        last.write_bytes(data[:len(data) // 2])      # the recorder died in the last file
    else:
        from qail_ros.bag import scan_mcap
        chunk = scan_mcap(last).chunks[0]
        last.write_bytes(data[:chunk.start + chunk.length // 2])
    report = recover_bag(_old(bag))
    out = Path(report['output'])
    assert report['expected'] == 6 * n and 4 * n < report['recovered'] < 6 * n
    assert report['lost'] == 6 * n - report['recovered']
    meta = _yaml_load(out / 'metadata.yaml')
    assert meta['relative_file_paths'] == _yaml_load(bag / 'metadata.yaml')[
        'relative_file_paths']
    assert meta['compression_mode'] == ('FILE' if file_zstd else '')
    assert _any_reader_count(out) == report['recovered']


def test_message_compressed_bag(tmp_path):
    from rosbags.rosbag2 import CompressionFormat, CompressionMode, Writer
    writer = Writer(tmp_path / 'msgz', version=8)
    writer.set_compression(CompressionMode.MESSAGE, CompressionFormat.ZSTD)
    with writer:
        conn = writer.add_connection('/note', 'std_msgs/msg/String', typestore=m.typestore())
        for i in range(N):
            writer.write(conn, i + 1, m.serialize(m.new('std_msgs/msg/String', data=str(i))))
    with BagReader(tmp_path / 'msgz') as reader:
        assert reader.compression == ('zstd', 'message')
        assert [msg.data for _t, _s, msg in reader.messages()] == [str(i) for i in range(N)]
    report = recover_bag(_old(tmp_path / 'msgz'), force=True)
    assert _any_reader_count(Path(report['output'])) == N


def test_recovery_says_plainly_when_it_cannot_help(tmp_path):
    bag = _split_bag(tmp_path)
    (bag / 'split_1.mcap').unlink()
    for call in (lambda: BagReader(bag), lambda: recover_bag(_old(bag))):
        with pytest.raises(BagError, match='missing \\(split_1.mcap\\).*cannot help'):
            call()
    other = _write(tmp_path / 'fmt')
    info = _yaml_load(other / 'metadata.yaml')
    info['topics_with_message_count'][0]['topic_metadata']['serialization_format'] = 'json'
    _yaml_dump(other / 'metadata.yaml', info)
    with pytest.raises(BagError, match="serialization format \\['json'\\].*cannot help"):
        recover_bag(_old(other))
    db = _write(tmp_path / 'db', storage='sqlite3')
    data = (db / 'db.db3').read_bytes()
    (db / 'db.db3').write_bytes(data[:len(data) // 2])
    with pytest.raises(BagError, match='corrupt sqlite3 file.*cannot help'):
        recover_bag(_old(db))
    assert not (tmp_path / 'db.recovered').exists()


# ------------------------------------------------------------------------------------------
# truncated copies of each storage; --in-place
# ------------------------------------------------------------------------------------------
def test_a_zstd_mcap_cut_inside_a_chunk_keeps_the_whole_messages_of_that_chunk(tmp_path):
    # 6000 messages, one chunk of ~0.5 MB: several zstd blocks, so a cut frame still decodes
    bag = _write(tmp_path / 'z', compression='zstd', chunk_size=1 << 22, n=3000)
    mcap = bag / 'z.mcap'
    from qail_ros.bag import scan_mcap
    full = scan_mcap(mcap)
    assert len(full.chunks) == 1
    chunk = full.chunks[0]
    data = mcap.read_bytes()
    mcap.write_bytes(data[:chunk.start + int(chunk.length * 0.7)])
    report = recover_bag(_old(bag))
    assert 0 < report['recovered'] < 6000 and report['expected'] == 6000
    assert report['lost'] == 6000 - report['recovered']
    assert _any_reader_count(Path(report['output'])) == report['recovered']


def test_in_place_replaces_the_files_and_keeps_no_copy(tmp_path):
    bag = _write(tmp_path / 'ip')
    data = (bag / 'ip.mcap').read_bytes()
    (bag / 'ip.mcap').write_bytes(data[:len(data) - 200])     # the summary is cut
    report = recover_bag(_old(bag), in_place=True)
    assert report['output'] == str(bag) and report['recovered'] == 2 * N
    assert sorted(p.name for p in tmp_path.iterdir()) == ['ip']
    assert _any_reader_count(bag) == 2 * N


# ------------------------------------------------------------------------------------------
# ROS 1
# ------------------------------------------------------------------------------------------
def _ros1_bag(path: Path, n: int = N) -> Path:
    from rosbags.rosbag1 import Writer
    from rosbags.typesys import Stores, get_typestore
    noetic = get_typestore(Stores.ROS1_NOETIC)
    img, hdr = noetic.types['sensor_msgs/msg/Image'], noetic.types['std_msgs/msg/Header']
    tw, vec = noetic.types['geometry_msgs/msg/TwistStamped'], noetic.types[
        'geometry_msgs/msg/Vector3']
    twist = noetic.types['geometry_msgs/msg/Twist']
    time_cls = noetic.types['builtin_interfaces/msg/Time']
    with Writer(path) as writer:
        c_img = writer.add_connection('/camera/image_raw', 'sensor_msgs/msg/Image',
                                      typestore=noetic)
        c_cmd = writer.add_connection('/cmd_vel', 'geometry_msgs/msg/TwistStamped',
                                      typestore=noetic)
        for i in range(n):
            stamp = time_cls(sec=10, nanosec=i * 1000)
            t = 10_000_000_000 + i * 1000
            frame = np.full((4, 6, 3), i, np.uint8)
            writer.write(c_img, t, bytes(noetic.serialize_ros1(img(
                header=hdr(seq=i, stamp=stamp, frame_id='cam'), height=4, width=6,
                encoding='rgb8', is_bigendian=0, step=18, data=frame.ravel()),
                'sensor_msgs/msg/Image')))
            writer.write(c_cmd, t + 10, bytes(noetic.serialize_ros1(tw(
                header=hdr(seq=i, stamp=stamp, frame_id='base'),
                twist=twist(linear=vec(x=float(i), y=0.0, z=0.0),
                            angular=vec(x=0.0, y=0.0, z=-float(i)))),
                'geometry_msgs/msg/TwistStamped')))
    return path


def test_ros1_bag_info_and_messages(tmp_path, capsys):
    bag = _ros1_bag(tmp_path / 'robot.bag')
    with BagReader(bag) as reader:
        assert reader.storage == 'rosbag1' and reader.message_count == 2 * N
        msgs = list(reader.messages('/cmd_vel'))
        assert [msg.twist.linear.x for _t, _s, msg in msgs] == [float(i) for i in range(N)]
        raw = next(reader.messages('/camera/image_raw', raw=True)).msg
        assert raw[:4] == b'\x00\x01\x00\x00'            # converted to CDR
        assert reader.deserialize(raw, '/camera/image_raw').header.frame_id == 'cam'
    from qail_ros.cli import main
    assert main(['bag', 'info', str(bag)]) == 0
    out = capsys.readouterr().out
    assert 'rosbag1 (ROS 1 bag)' in out and '/cmd_vel' in out
