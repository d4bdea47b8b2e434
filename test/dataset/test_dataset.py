"""Data set builder, manifest and statistics (hand-checked), errors, reader, LeRobot export."""
import json

import numpy as np
import pytest

from qail_ros import image as im
from qail_ros import messages as m
from qail_ros import policy_io
from qail_ros.bag import BagWriter
from qail_ros.dataset import QailDataset, TopicMap, build_dataset, export_lerobot, load_manifest
from qail_ros.errors import BagError
from qail_ros.recording import EPISODE_TOPIC, EpisodeInfo

T0 = 1_763_890_000_000_000_000
ROLES = {'/image_raw': 'image', '/instruction': 'instruction', '/cmd_twist': 'action',
         '/policy/raw_outputs': 'raw_outputs'}


def _frame(k):
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[..., 0] = k
    rgb[k % 6, :, 1] = 255
    return rgb


def _twist(stamp, x):
    msg = m.new('geometry_msgs/msg/TwistStamped')
    msg.header.stamp = m.time_from_ns(stamp)
    msg.twist.linear.x = float(x)
    msg.twist.angular.z = -float(x)
    return msg


def _write_episode(path, index, actions, success='true', frames=5, roles=ROLES, facts=True,
                   bogus=True, session='s1', chunk_size=1 << 20, task='pick'):
    """Frames k=0..frames-1 at 100 ms; action i acts on frame i (stamp copied)."""
    ep = EpisodeInfo(index=index, session=session, policy_id='conv', precision='fp32',
                     engine_hash='sha256:00', task=task, success=success, complete=True,
                     roles=roles)
    with BagWriter(path, custom_metadata=ep.to_metadata() if facts else None,
                   chunk_size=chunk_size) as bag:
        bag.write('/instruction', m.new('std_msgs/msg/String', data=task), T0 - 1)
        for k in range(frames):
            stamp = T0 + index * 10**10 + k * 100_000_000
            bag.write('/image_raw', im.from_numpy(_frame(k), 'rgb8', stamp=stamp), stamp + 1000)
            if k < len(actions):
                bag.write('/cmd_twist', _twist(stamp, actions[k]), stamp + 2000)
                bag.write('/policy/raw_outputs',
                          policy_io.raw_outputs_to_msg(stamp, np.array([actions[k], 0.5])),
                          stamp + 3000)
        if bogus:   # an action whose frame does not exist
            bag.write('/cmd_twist', _twist(T0 + index * 10**10 + 7, 99.0), stamp + 4000)
        if facts:
            bag.write(EPISODE_TOPIC, ep.to_msg(), stamp + 5000)
    return path


@pytest.fixture
def two_episodes(tmp_path):
    rec = tmp_path / 'rec'
    rec.mkdir()
    _write_episode(rec / 'ep0', 0, [1, 2, 3, 4])
    _write_episode(rec / 'ep1', 1, [5, 6, 7, 8], success='false')
    return rec


def test_build_manifest_and_stats_are_hand_checked(two_episodes, tmp_path):
    out = tmp_path / 'ds'
    man = build_dataset([two_episodes], out, val_fraction=0.0, shard_frames=3)
    assert man == load_manifest(out)
    assert man['frames'] == 8 and len(man['episodes']) == 2
    assert [e['frames'] for e in man['episodes']] == [4, 4]
    assert man['episodes'][0]['duration_s'] == pytest.approx(0.3)
    assert man['episodes'][1]['success'] == 'false'
    assert man['pairing']['actions_without_frame'] == 2          # the two bogus stamps
    assert man['pairing']['frames_without_action'] == 2          # frame 4 of each episode
    assert man['features']['observation.images.image'] == {
        'dtype': 'uint8', 'shape': [6, 8, 3], 'source_topic': '/image_raw'}
    assert man['features']['action']['shape'] == [6]
    assert man['features']['teacher.raw_outputs']['shape'] == [2]
    assert [s['samples'] for s in man['shards']] == [3, 3, 2]
    assert all(s['sha256'].startswith('sha256:') and not s['recovered']
               for s in man['sources'])
    st = man['stats']['action']
    # linear.x over 1..8: mean 4.5, population std sqrt(5.25), q01 = 1 + 0.07, q99 = 8 - 0.07
    assert st['mean'][0] == pytest.approx(4.5) and st['mean'][5] == pytest.approx(-4.5)
    assert st['std'][0] == pytest.approx(5.25 ** 0.5)
    assert (st['min'][0], st['max'][0]) == (1.0, 8.0)
    assert st['q01'][0] == pytest.approx(1.07) and st['q99'][0] == pytest.approx(7.93)
    assert st['mean'][1] == 0.0 and st['std'][1] == 0.0
    assert man['stats']['num_transitions'] == 8 and man['tasks'] == ['pick']
    ds = QailDataset(out, split='all')
    assert len(ds) == 8
    s = ds[5]                                                     # episode 1, frame 1
    assert int(s['episode_index']) == 1 and int(s['frame_index']) == 1
    assert s['action'][0].item() == 6.0
    np.testing.assert_array_equal(s['observation.images.image'].numpy(), _frame(1))
    assert s['teacher.raw_outputs'].tolist() == [6.0, 0.5]
    assert int(s['timestamp_ns']) == T0 + 10**10 + 100_000_000
    import torch.utils.data
    assert isinstance(ds, torch.utils.data.Dataset)


def test_split_by_episode_filters_and_resize(two_episodes, tmp_path):
    extra = two_episodes / 'ep2'
    _write_episode(extra, 2, [9, 9])
    man = build_dataset([two_episodes], tmp_path / 'ds', val_fraction=0.5, drop_failed=True,
                        image_size=(3, 4))
    assert [e['index'] for e in man['episodes']] == [0, 1]        # ep1 (failed) dropped
    assert man['filters']['dropped_episodes'][0]['reason'].startswith('failed')
    assert sorted(man['splits']['train'] + man['splits']['val']) == [0, 1]
    assert len(man['splits']['val']) == 1
    assert man['features']['observation.images.image']['shape'] == [3, 4, 3]
    train = QailDataset(tmp_path / 'ds', split='train')
    val = QailDataset(tmp_path / 'ds', split='val')
    assert len(train) + len(val) == 6
    assert {int(train[i]['episode_index']) for i in range(len(train))}.isdisjoint(
        {int(val[i]['episode_index']) for i in range(len(val))})


def test_missing_topic_names_the_topic_and_the_bags_topics(tmp_path):
    bag = _write_episode(tmp_path / 'robot', 0, [1, 2], facts=False)
    tmap = tmp_path / 'map.yaml'
    tmap.write_text('images: {image: /image_raw}\naction: /cmd_twist\nstate: [/joint_states]\n')
    with pytest.raises(BagError) as err:
        build_dataset([bag], tmp_path / 'ds', topic_map=tmap)
    text = str(err.value)
    assert "no topic '/joint_states'" in text and 'state' in text
    assert '/cmd_twist (geometry_msgs/msg/TwistStamped' in text and '/image_raw' in text


def test_foreign_bag_with_topic_map_and_unstamped_actions(tmp_path):
    bag = tmp_path / 'robot'
    with BagWriter(bag) as w:
        for k in range(4):
            stamp = T0 + k * 100_000_000
            w.write('/cam', im.from_numpy(_frame(k), 'rgb8', stamp=stamp), stamp + 10)
            w.write('/joint_states', m.new('sensor_msgs/msg/JointState', header=m.new(
                'std_msgs/msg/Header', stamp=m.time_from_ns(stamp - 5)),
                position=np.array([k, -k], np.float64)), stamp + 20)
            w.write('/cmd', m.new('std_msgs/msg/Float64MultiArray',
                                  data=np.array([k * 0.5], np.float64)), stamp + 30_000_000)
    tmap = tmp_path / 'map.yaml'
    tmap.write_text('images: {front: /cam}\nstate: /joint_states\naction: /cmd\n')
    with pytest.raises(BagError, match='receive_time'):
        build_dataset([bag], tmp_path / 'ds1', topic_map=tmap)
    tmap.write_text('images: {front: /cam}\nstate: /joint_states\naction: /cmd\n'
                    'pairing: receive_time\nmax_gap_ms: 50\n')
    man = build_dataset([bag], tmp_path / 'ds2', topic_map=tmap, val_fraction=0.0)
    assert man['frames'] == 4 and man['filters']['pairing'] == 'receive_time'
    ds = QailDataset(tmp_path / 'ds2', split='all')
    assert ds[2]['observation.state'].tolist() == [2.0, -2.0]
    assert ds[2]['action'].tolist() == [1.0]
    np.testing.assert_array_equal(ds[3]['observation.images.front'].numpy(), _frame(3))


def test_truncated_bag_recovers_complete_messages(tmp_path):
    bag = _write_episode(tmp_path / 'cut', 0, list(range(1, 31)), frames=30, chunk_size=2000)
    mcap = next(bag.glob('*.mcap'))
    data = mcap.read_bytes()
    mcap.write_bytes(data[:int(len(data) * 0.6)])                 # the writer died mid-file
    (bag / 'metadata.yaml').unlink()
    said = []
    man = build_dataset([bag], tmp_path / 'ds', progress=said.append, val_fraction=0.0,
                        topic_map=TopicMap.from_roles(ROLES))
    assert any('not closed' in s and 'complete messages' in s for s in said)
    assert man['sources'][0]['recovered'] is True and man['episodes'][0]['recovered']
    assert 5 <= man['frames'] < 30
    ds = QailDataset(tmp_path / 'ds', split='all')
    last = ds[len(ds) - 1]
    k = int(last['frame_index'])
    assert last['action'][0].item() == k + 1                      # pairs stay exact
    np.testing.assert_array_equal(last['observation.images.image'].numpy(), _frame(k))


def test_export_lerobot_v3_layout(two_episodes, tmp_path):
    import pyarrow.parquet as pq
    build_dataset([two_episodes], tmp_path / 'ds', val_fraction=0.5)
    out = tmp_path / 'lerobot'
    info = export_lerobot(tmp_path / 'ds', out)
    on_disk = json.loads((out / 'meta' / 'info.json').read_text())
    assert on_disk == info
    assert info['codebase_version'] == 'v3.0' and info['fps'] == 10
    assert info['total_episodes'] == 2 and info['total_frames'] == 8
    assert info['splits'] == {'train': '0:1', 'val': '1:2'}
    assert info['data_path'] == 'data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet'
    assert info['features']['observation.images.image']['dtype'] == 'image'
    assert info['features']['action'] == {'dtype': 'float32', 'shape': [6], 'names': None}
    data = pq.read_table(out / 'data' / 'chunk-000' / 'file-000.parquet')
    assert data.num_rows == 8
    assert {'observation.images.image', 'action', 'timestamp', 'frame_index', 'episode_index',
            'index', 'task_index'} <= set(data.column_names)
    rows = data.to_pylist()
    assert [r['index'] for r in rows] == list(range(8))
    assert rows[1]['timestamp'] == pytest.approx(0.1)
    from PIL import Image as PILImage
    import io
    png = rows[0]['observation.images.image']['bytes']
    np.testing.assert_array_equal(np.asarray(PILImage.open(io.BytesIO(png))),
                                  _frame(0))
    eps = pq.read_table(out / 'meta' / 'episodes' / 'chunk-000' / 'file-000.parquet').to_pylist()
    assert [(e['episode_index'], e['length'], e['dataset_from_index'], e['dataset_to_index'])
            for e in eps] == [(0, 4, 0, 4), (1, 4, 4, 8)]
    assert eps[0]['tasks'] == ['pick'] and eps[0]['data/chunk_index'] == 0
    tasks = pq.read_table(out / 'meta' / 'tasks.parquet')
    assert tasks.to_pylist() == [{'task_index': 0, 'task': 'pick'}]
    assert json.loads(tasks.schema.metadata[b'pandas'])['index_columns'] == ['task']
    stats = json.loads((out / 'meta' / 'stats.json').read_text())
    assert stats['action']['max'][0] == 8.0 and stats['action']['count'] == [8]
    assert np.asarray(stats['observation.images.image']['mean']).shape == (3, 1, 1)


def test_cli_info_and_build(two_episodes, tmp_path, capsys):
    from qail_ros.cli import main
    assert main(['dataset', 'build', str(two_episodes), '-o', str(tmp_path / 'ds'),
                 '--val-fraction', '0']) == 0
    assert main(['dataset', 'info', str(tmp_path / 'ds')]) == 0
    text = capsys.readouterr().out
    assert '2 episodes, 8 frames' in text and '/cmd_twist' in text and 'q99' in text
    assert main(['dataset', 'build', str(tmp_path / 'nope'), '-o', str(tmp_path / 'x')]) == 2
