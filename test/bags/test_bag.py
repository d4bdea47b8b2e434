"""BagWriter output read back by independent readers (mcap + mcap_ros2, rosbags), and BagReader."""
from pathlib import Path

import numpy as np
import pytest
import yaml

from qail_ros import image as im
from qail_ros import messages as m
from qail_ros.bag import BagReader, BagWriter, recover_bag
from qail_ros.errors import BagError, UnknownMessageTypeError
from qail_ros.runtime.api import QoS

N = 12


def _frame(i):
    return np.full((24, 32, 3), i, np.uint8) + np.arange(32, dtype=np.uint8)[None, :, None]


def _write_sample(path, **kwargs):
    with BagWriter(path, custom_metadata={'task': 'pick cube', 'operator': 'ci'},
                   **kwargs) as bag:
        bag.add_topic('/camera/image_raw', 'sensor_msgs/msg/Image',
                      qos=QoS(depth=5, reliability='best_effort'))
        for i in range(N):
            stamp = 1_700_000_000_000_000_000 + i * 33_000_000
            bag.write('/camera/image_raw', im.from_numpy(_frame(i), 'rgb8', stamp=stamp,
                                                         frame_id='camera'), stamp)
            # CDR bytes are accepted too, once the topic is declared
            if i == 0:
                bag.add_topic('/action', 'std_msgs/msg/Float32MultiArray')
            action = m.new('std_msgs/msg/Float32MultiArray',
                           data=np.arange(7, dtype=np.float32) * i)
            bag.write('/action', m.serialize(action), stamp + 1)
            bag.write('/instruction', m.new('std_msgs/msg/String', data=f'step {i}'), stamp + 2)
    return Path(path)


@pytest.fixture(scope='module')
def sample_bag(tmp_path_factory):
    return _write_sample(tmp_path_factory.mktemp('bags') / 'sample')


def test_metadata_yaml_is_what_humble_parses(sample_bag):
    meta = yaml.safe_load((sample_bag / 'metadata.yaml').read_text())
    info = meta['rosbag2_bagfile_information']
    assert info['version'] == 8
    assert info['storage_identifier'] == 'mcap'
    assert info['relative_file_paths'] == ['sample.mcap']
    assert info['message_count'] == 3 * N
    assert info['custom_data'] == {'task': 'pick cube', 'operator': 'ci'}
    topics = {t['topic_metadata']['name']: t for t in info['topics_with_message_count']}
    assert set(topics) == {'/camera/image_raw', '/action', '/instruction'}
    cam = topics['/camera/image_raw']
    assert cam['message_count'] == N
    assert cam['topic_metadata']['type'] == 'sensor_msgs/msg/Image'
    assert cam['topic_metadata']['serialization_format'] == 'cdr'
    assert cam['topic_metadata']['type_description_hash'] == m.type_hash('sensor_msgs/msg/Image')
    # Humble's yaml-cpp decoder reads offered_qos_profiles as a *string* of YAML, with enum
    # values as integers (rmw: keep_last 1, best_effort 2, volatile 2, automatic 1).
    qos_text = cam['topic_metadata']['offered_qos_profiles']
    assert isinstance(qos_text, str)
    (qos,) = yaml.safe_load(qos_text)
    assert (qos['history'], qos['depth'], qos['reliability'], qos['durability'],
            qos['liveliness']) == (1, 5, 2, 2, 1)
    assert qos['deadline'] == {'sec': 9223372036, 'nsec': 854775807}
    assert yaml.safe_load(topics['/action']['topic_metadata']['offered_qos_profiles'])[0][
        'reliability'] == 1


def test_version_9_writes_the_list_layout(tmp_path):
    with BagWriter(tmp_path / 'v9', version=9) as bag:
        bag.add_topic('/x', 'std_msgs/msg/String', qos=QoS(depth=3))
        bag.write('/x', m.new('std_msgs/msg/String', data='a'), 1)
    info = yaml.safe_load((tmp_path / 'v9' / 'metadata.yaml').read_text())[
        'rosbag2_bagfile_information']
    assert info['version'] == 9
    (qos,) = info['topics_with_message_count'][0]['topic_metadata']['offered_qos_profiles']
    assert (qos['history'], qos['depth'], qos['reliability']) == ('keep_last', 3, 'reliable')


def test_mcap_reader_with_ros2_decoder_reads_every_message(sample_bag):
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory
    seen = {'/camera/image_raw': [], '/action': [], '/instruction': []}
    with (sample_bag / 'sample.mcap').open('rb') as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        summary = reader.get_summary()
        assert summary.statistics.message_count == 3 * N
        schemas = {s.name: s for s in summary.schemas.values()}
        assert set(schemas) == {'sensor_msgs/msg/Image', 'std_msgs/msg/Float32MultiArray',
                                'std_msgs/msg/String'}
        assert all(s.encoding == 'ros2msg' for s in schemas.values())
        assert 'MSG: std_msgs/Header' in schemas['sensor_msgs/msg/Image'].data.decode()
        for schema, channel, message, decoded in reader.iter_decoded_messages():
            assert channel.message_encoding == 'cdr'
            seen[channel.topic].append((schema.name, message.log_time, decoded))
    assert [len(v) for v in seen.values()] == [N, N, N]
    for i, (name, log_time, img) in enumerate(seen['/camera/image_raw']):
        assert name == 'sensor_msgs/msg/Image'
        assert log_time == 1_700_000_000_000_000_000 + i * 33_000_000
        assert (img.height, img.width, img.encoding, img.step) == (24, 32, 'rgb8', 96)
        assert img.header.frame_id == 'camera'
        np.testing.assert_array_equal(np.frombuffer(bytes(img.data), np.uint8).reshape(24, 32, 3),
                                      _frame(i))
    for i, (_n, _t, action) in enumerate(seen['/action']):
        np.testing.assert_array_equal(action.data, np.arange(7, dtype=np.float32) * i)
    assert [d.data for _n, _t, d in seen['/instruction']] == [f'step {i}' for i in range(N)]


def test_rosbags_anyreader_and_reader_read_every_message(sample_bag):
    from rosbags.highlevel import AnyReader
    from rosbags.rosbag2 import Reader
    with AnyReader([sample_bag]) as reader:
        types = {c.topic: c.msgtype for c in reader.connections}
        assert types == {'/camera/image_raw': 'sensor_msgs/msg/Image',
                         '/action': 'std_msgs/msg/Float32MultiArray',
                         '/instruction': 'std_msgs/msg/String'}
        frames = [reader.deserialize(raw, c.msgtype) for c, _t, raw in reader.messages()
                  if c.topic == '/camera/image_raw']
    assert len(frames) == N
    for i, frame in enumerate(frames):
        np.testing.assert_array_equal(im.to_numpy(frame), _frame(i))
    with Reader(sample_bag) as reader:
        assert reader.message_count == 3 * N
        assert reader.storage.metadata.custom == {'task': 'pick cube', 'operator': 'ci'}
        qos = {c.topic: c.ext.offered_qos_profiles[0] for c in reader.connections}
        assert qos['/camera/image_raw'].depth == 5
        assert qos['/camera/image_raw'].reliability.name == 'BEST_EFFORT'
        assert sum(1 for _ in reader.messages()) == 3 * N


def test_our_reader(sample_bag):
    with BagReader(sample_bag) as bag:
        assert not bag.recovered
        assert bag.storage == 'mcap' and bag.version == 8
        assert bag.message_count == 3 * N
        assert bag.topics['/camera/image_raw'].msgtype == 'sensor_msgs/msg/Image'
        assert bag.topics['/camera/image_raw'].count == N
        assert bag.topics['/camera/image_raw'].qos[0].depth == 5
        assert bag.custom_metadata['task'] == 'pick cube'
        assert bag.start_ns == 1_700_000_000_000_000_000
        assert bag.duration_ns == (N - 1) * 33_000_000 + 2
        assert bag.size_bytes > N * 24 * 32 * 3
        frames = list(bag.messages(topics=['/camera/image_raw']))
        assert [t for t, _s, _m in frames] == ['/camera/image_raw'] * N
        for i, (_t, stamp, msg) in enumerate(frames):
            assert m.ns_from_time(msg.header.stamp) == stamp
            np.testing.assert_array_equal(im.to_numpy(msg), _frame(i))
        raw = [data for _t, _s, data in bag.messages('/instruction', raw=True)]
        assert raw[3] == m.serialize(m.new('std_msgs/msg/String', data='step 3'))
        assert len(list(bag)) == 3 * N
        with pytest.raises(BagError, match=r"\['/nope'\] not in bag"):
            list(bag.messages(['/nope']))


def test_sqlite3_storage(tmp_path):
    from rosbags.highlevel import AnyReader
    path = _write_sample(tmp_path / 'sq', storage='sqlite3')
    assert (path / 'sq.db3').exists()
    info = yaml.safe_load((path / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
    assert info['storage_identifier'] == 'sqlite3' and info['message_count'] == 3 * N
    with AnyReader([path]) as reader:
        assert {c.msgtype for c in reader.connections} == {
            'sensor_msgs/msg/Image', 'std_msgs/msg/Float32MultiArray', 'std_msgs/msg/String'}
        texts = [reader.deserialize(raw, c.msgtype).data for c, _t, raw in reader.messages()
                 if c.topic == '/instruction']
    assert texts == [f'step {i}' for i in range(N)]
    with BagReader(path) as bag:
        assert bag.storage == 'sqlite3' and bag.message_count == 3 * N
        frames = [msg for _t, _s, msg in bag.messages('/camera/image_raw')]
        np.testing.assert_array_equal(im.to_numpy(frames[-1]), _frame(N - 1))


def test_zstd_chunks(tmp_path):
    path = _write_sample(tmp_path / 'z', compression='zstd')
    from rosbags.rosbag2 import Reader
    with Reader(path) as reader:
        assert sum(1 for _ in reader.messages()) == 3 * N
    with BagReader(path) as bag:
        assert len(list(bag.messages())) == 3 * N


def test_a_bag_is_closed_on_errors_and_ctrl_c(tmp_path):
    for exc in (RuntimeError('boom'), KeyboardInterrupt()):
        path = tmp_path / type(exc).__name__
        with pytest.raises(type(exc)):
            with BagWriter(path) as bag:
                bag.write('/x', m.new('std_msgs/msg/String', data='kept'), 5)
                raise exc
        assert (path / 'metadata.yaml').exists()
        with BagReader(path) as reader:
            assert not reader.recovered
            assert [msg.data for _t, _s, msg in reader] == ['kept']


def test_writer_errors(tmp_path):
    with pytest.raises(BagError, match='exists already'):
        BagWriter(tmp_path)
    with pytest.raises(BagError, match="'rosbag' is not supported"):
        BagWriter(tmp_path / 'a', storage='rosbag')
    with pytest.raises(BagError, match='use 8'):
        BagWriter(tmp_path / 'a', version=5)
    with pytest.raises(BagError, match='str to str'):
        BagWriter(tmp_path / 'a', custom_metadata={'n': 3})
    bag = BagWriter(tmp_path / 'b')
    with pytest.raises(BagError, match='not open'):
        bag.write('/x', m.new('std_msgs/msg/String'))
    with bag:
        with pytest.raises(BagError, match='add_topic'):
            bag.write('/raw', b'\x00\x01\x00\x00')
        bag.write('/x', m.new('std_msgs/msg/String'), 1)
        with pytest.raises(BagError, match='carries std_msgs/msg/String'):
            bag.write('/x', m.new('std_msgs/msg/Bool'), 2)
        with pytest.raises(UnknownMessageTypeError, match='not registered'):
            bag.add_topic('/y', 'nonexistent_msgs/msg/Thing')


def test_reader_errors_name_the_fix(tmp_path):
    with pytest.raises(BagError, match='no bag at'):
        BagReader(tmp_path / 'missing')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(BagError, match='not a rosbag2 bag'):
        BagReader(tmp_path / 'empty')
    junk = tmp_path / 'junk'
    junk.mkdir()
    (junk / 'junk.mcap').write_bytes(b'this is not an mcap file at all' * 10)
    with pytest.raises(BagError, match='not an mcap file'):
        BagReader(junk)
    # metadata.yaml present but the data file damaged: rosbags fails, we say what to do
    good = _write_sample(tmp_path / 'dmg')
    data = (good / 'dmg.mcap').read_bytes()
    (good / 'dmg.mcap').write_bytes(data[:8] + b'\x00' * 64 + data[72:])
    with pytest.raises(BagError, match='bag recover'):
        BagReader(good)
    (tmp_path / 'notes.txt').write_text('x')
    with pytest.raises(BagError, match='not a bag'):
        BagReader(tmp_path / 'notes.txt')


def test_reader_decodes_types_only_the_bag_defines(tmp_path):
    """A bag recorded on a robot with a custom package: its embedded definition is used."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore
    store = get_typestore(Stores.ROS2_JAZZY)
    store.register(get_types_from_msg('float64 speed\nstd_msgs/Header header\n',
                                      'qail_bagtest_msgs/msg/Speed'))
    cls = store.types['qail_bagtest_msgs/msg/Speed']
    hdr = store.types['std_msgs/msg/Header'](
        stamp=store.types['builtin_interfaces/msg/Time'](sec=1, nanosec=2), frame_id='base')
    with Writer(tmp_path / 'custom', version=8, storage_plugin=StoragePlugin.MCAP) as writer:
        conn = writer.add_connection('/speed', 'qail_bagtest_msgs/msg/Speed', typestore=store)
        writer.write(conn, 10, store.serialize_cdr(cls(speed=2.5, header=hdr), cls.__msgtype__))
    with BagReader(tmp_path / 'custom') as bag:
        ((_t, stamp, msg),) = list(bag.messages())
    assert stamp == 10 and msg.speed == 2.5 and msg.header.frame_id == 'base'


def test_recover_leaves_a_good_bag_alone(sample_bag):
    before = (sample_bag / 'sample.mcap').read_bytes()
    report = recover_bag(sample_bag, quiet_s=0)
    assert report['action'].startswith('none')
    assert (sample_bag / 'sample.mcap').read_bytes() == before
