"""fp_recorder end to end: camera -> action publisher (stamps copied) -> recorder -> bag,
read back by independent readers (the mcap package with mcap_ros2, and rosbags)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from qail_ros import messages as m
from qail_ros import policy_io
from qail_ros.bag import BagReader
from qail_ros.errors import BagError, ParameterError
from qail_ros.nodes.camera_source import CameraSource
from qail_ros.nodes.fp_recorder import FpRecorder
from qail_ros.recording import EPISODE_TOPIC, EpisodeInfo
from qail_ros.runtime import Node

ROOT = Path(__file__).resolve().parents[2]


class StampedPolicy(Node):
    """Acts on every second frame; copies the frame's stamp into cmd_twist and raw_outputs.
    Every 10th action carries a wrong stamp on purpose (a mismatch the recorder must count)."""

    def __init__(self, **kwargs):
        super().__init__('test_policy', **kwargs)
        self.twist_pub = self.create_publisher('geometry_msgs/msg/TwistStamped', 'cmd_twist', 10)
        self.raw_pub = self.create_publisher('std_msgs/msg/Float64MultiArray',
                                             'test_policy/raw_outputs', 10)
        self.sub = self.create_subscription('sensor_msgs/msg/Image', 'image_raw',
                                            self.image_callback, 10)
        self.frames = 0
        self.actions = 0
        self.bogus = 0

    def image_callback(self, msg):
        self.frames += 1
        if self.frames % 2:
            return
        stamp = m.ns_from_time(msg.header.stamp)
        self.actions += 1
        if self.actions % 10 == 0:
            stamp += 1                      # deliberate mismatch
            self.bogus += 1
        twist = m.new('geometry_msgs/msg/TwistStamped')
        twist.header.stamp = m.time_from_ns(stamp)
        twist.twist.linear.x = float(self.actions)
        self.twist_pub.publish(twist)
        self.raw_pub.publish(policy_io.raw_outputs_to_msg(stamp, np.arange(3.0) + self.actions))


def _args(**params):
    args = ['--ros-args']
    for key, value in params.items():
        if isinstance(value, list):
            value = '[' + ','.join(f"'{v}'" for v in value) + ']'
        args += ['-p', f'{key}:={value}']
    return args


def _recorder(tmp_path, **params):
    base = dict(output_dir=str(tmp_path),
                action_topics=['cmd_twist:geometry_msgs/msg/TwistStamped'],
                raw_outputs_topic='test_policy/raw_outputs', timing_topic='',
                report_period_s=0.0, min_free_mb=1.0, policy_id='test_policy',
                precision='fp32', engine_hash='sha256:feed')
    base.update(params)
    rec = FpRecorder(cli_args=_args(**base))
    rec.on_configure()
    return rec


def _camera(frames, **params):
    params = dict(dict(rate_hz=200.0, width=32, height=24, max_frames=frames, log_period_s=0.0),
                  **params)
    cam = CameraSource(cli_args=_args(**params))
    cam.on_configure()
    return cam


def _shutdown(*nodes):
    for node in nodes:
        node.on_deactivate()
        node.on_cleanup()
        node.destroy_node()


def _bags(tmp_path):
    return sorted(p for p in Path(tmp_path).iterdir() if p.is_dir())


def test_record_episode_pairs_by_stamp_and_is_read_by_independent_readers(runtime, tmp_path):
    rec = _recorder(tmp_path, task='pick the red block')
    policy = StampedPolicy()
    cam = _camera(40)
    control = Node('test_control').create_publisher(
        'std_msgs/msg/String', 'fp_recorder/control', 10)
    rec.on_activate()
    cam.on_activate()
    runtime.spin_until(lambda: cam.finished and policy.frames == 40, timeout_s=20)
    runtime.spin(duration_s=0.1)
    control.publish(m.new('std_msgs/msg/String', data='episode_end success'))
    runtime.spin_until(lambda: rec.episodes_done == 1, timeout_s=5)
    control.publish(m.new('std_msgs/msg/String', data='stop'))   # 2nd episode started: stop it
    runtime.spin_until(lambda: rec.episodes_done == 2, timeout_s=5)
    _shutdown(cam, policy, rec)

    bags = _bags(tmp_path)
    assert len(bags) == 2
    first = bags[0]
    # -- independent reader 1: the mcap package + mcap_ros2 decoder, on the raw file ------------
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory
    mcap_file = next(first.glob('*.mcap'))
    types, counts, twists = {}, {}, []
    with open(mcap_file, 'rb') as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        for schema, channel, _message, decoded in reader.iter_decoded_messages():
            types[channel.topic] = schema.name
            counts[channel.topic] = counts.get(channel.topic, 0) + 1
            if channel.topic == '/cmd_twist':
                twists.append(decoded.twist.linear.x)
    assert types == {'/image_raw': 'sensor_msgs/msg/Image',
                     '/cmd_twist': 'geometry_msgs/msg/TwistStamped',
                     '/test_policy/raw_outputs': 'std_msgs/msg/Float64MultiArray',
                     EPISODE_TOPIC: 'std_msgs/msg/String'}
    assert counts['/image_raw'] == 40 and counts['/cmd_twist'] == 20
    assert twists == [float(i) for i in range(1, 21)]
    assert counts[EPISODE_TOPIC] == 2                   # facts at start and at end
    # -- independent reader 2: rosbags' AnyReader; custom metadata from metadata.yaml ---------
    from rosbags.highlevel import AnyReader
    with AnyReader([first]) as reader:
        assert {c.msgtype for c in reader.connections} >= {'sensor_msgs/msg/Image',
                                                           'geometry_msgs/msg/TwistStamped'}
        assert sum(1 for _ in reader.messages()) == 82
    import yaml
    info = yaml.safe_load((first / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
    custom = info['custom_data']
    assert custom['qail_ros.episode.success'] == 'true'
    assert custom['qail_ros.episode.complete'] == 'true'
    assert custom['qail_ros.episode.policy_id'] == 'test_policy'
    assert custom['qail_ros.episode.engine_hash'] == 'sha256:feed'
    assert custom['qail_ros.episode.task'] == 'pick the red block'
    # -- the mismatch counts: 20 actions, every 10th with a wrong stamp ------------------------
    ep = EpisodeInfo.from_metadata(custom)
    twist_counts = ep.pairing['topics']['/cmd_twist']
    assert twist_counts == {'received': 20, 'matched': 18, 'matched_not_recorded': 0,
                            'unmatched': 2, 'unstamped': 0}
    assert ep.pairing['topics']['/test_policy/raw_outputs']['unmatched'] == 2
    assert ep.pairing['observations'] == 40 and ep.pairing['observations_matched'] == 18
    assert ep.counts['/image_raw'] == 40
    # the second episode was stopped with no outcome
    with BagReader(bags[1]) as bag:
        assert bag.custom_metadata['qail_ros.episode.index'] == '1'
        assert bag.custom_metadata['qail_ros.episode.success'] == 'unknown'


def test_rate_limit_keeps_camera_at_5hz_and_actions_whole(runtime, tmp_path):
    rec = _recorder(tmp_path, rate_limits=['image_raw:5'])
    policy = StampedPolicy()
    cam = _camera(60, rate_hz=30.0)          # 2 s at 30 Hz
    rec.on_activate()
    cam.on_activate()
    runtime.spin_until(lambda: cam.finished and policy.frames == 60, timeout_s=20)
    runtime.spin(duration_s=0.1)
    _shutdown(cam, policy, rec)
    with BagReader(_bags(tmp_path)[0]) as bag:
        counts = {t: i.count for t, i in bag.topics.items()}
        ep = EpisodeInfo.from_metadata(bag.custom_metadata)
    assert 9 <= counts['/image_raw'] <= 11                  # 2 s at 5 Hz (+ the first frame)
    assert counts['/cmd_twist'] == 30                       # actions kept whole
    assert rec.rate_skipped['/image_raw'] == 60 - counts['/image_raw']
    t = ep.pairing['topics']['/cmd_twist']
    assert t['matched'] + t['matched_not_recorded'] + t['unmatched'] == 30
    assert t['matched_not_recorded'] >= 20                  # frames the limiter skipped
    assert ep.complete is False and ep.end_reason == 'shutdown'


def test_pause_resume_and_max_episode_duration(runtime, tmp_path):
    rec = _recorder(tmp_path, max_episode_duration_s=0.5, max_episodes=2, image_topics=['img'],
                    action_topics=[], raw_outputs_topic='')
    pub = Node('pub').create_publisher('sensor_msgs/msg/Image', 'img', 10)
    control = Node('ctl').create_publisher('std_msgs/msg/String', 'fp_recorder/control', 10)
    rec.on_activate()
    control.publish(m.new('std_msgs/msg/String', data='pause'))
    runtime.spin(duration_s=0.05)
    pub.publish(m.new('sensor_msgs/msg/Image'))
    control.publish(m.new('std_msgs/msg/String', data='resume'))
    pub.publish(m.new('sensor_msgs/msg/Image'))
    runtime.spin_until(lambda: rec.episodes_done == 2, timeout_s=5)
    assert not rec.recording                                 # max_episodes reached: idle
    _shutdown(rec)
    bags = _bags(tmp_path)
    assert len(bags) == 2
    with BagReader(bags[0]) as bag:
        assert bag.topics['/img'].count == 1                 # the paused one was skipped
        assert bag.custom_metadata['qail_ros.episode.end_reason'] == 'max_episode_duration_s'
        assert bag.custom_metadata['qail_ros.episode.complete'] == 'true'


def test_unwritable_output_dir_is_a_clear_error(runtime, tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('not a directory')
    rec = FpRecorder(cli_args=_args(output_dir=str(blocker / 'bags')))
    with pytest.raises(BagError, match='not writable.*output_dir'):
        rec.on_configure()
    rec.destroy_node()
    if os.geteuid() != 0:
        ro = tmp_path / 'ro'
        ro.mkdir(mode=0o500)
        rec = FpRecorder(cli_args=_args(output_dir=str(ro)))
        with pytest.raises(BagError, match='not writable'):
            rec.on_configure()
        rec.destroy_node()


def test_bad_parameters_are_named(runtime, tmp_path):
    with pytest.raises(ParameterError, match='rate_limits name topics that are not recorded'):
        FpRecorder(cli_args=_args(output_dir=str(tmp_path), rate_limits=['nope:5']))
    with pytest.raises(ParameterError, match='storage'):
        FpRecorder(cli_args=_args(storage='rosbag1'))


def test_ctrl_c_mid_episode_closes_the_bag(tmp_path):
    """A recorder process gets SIGINT mid-episode: the bag is closed, readable, incomplete."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), QAIL_ROS_TRANSPORT='none',
               QAIL_ROS_RUNTIME='embedded')
    script = (
        'import sys\n'
        'from qail_ros.nodes.camera_source import CameraSource\n'
        'from qail_ros.nodes.fp_recorder import FpRecorder\n'
        'from qail_ros.runtime import nodes_main\n'
        'sys.exit(nodes_main([(FpRecorder, sys.argv[1:]), (CameraSource, ["--ros-args", "-p", '
        '"width:=32", "-p", "height:=24", "-p", "log_period_s:=0.0"])], args=[]))\n')
    proc = subprocess.Popen([sys.executable, '-c', script, '--ros-args', '-p',
                             f'output_dir:={tmp_path}', '-p', 'min_free_mb:=1.0'],
                            env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not _bags(tmp_path):
            time.sleep(0.1)
        time.sleep(1.5)                                   # ~45 frames into the episode
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    bag_dir = _bags(tmp_path)[0]
    assert (bag_dir / 'metadata.yaml').exists()           # closed properly, not recovered
    with BagReader(bag_dir) as bag:
        assert not bag.recovered
        assert bag.topics['/image_raw'].count >= 10
        meta = bag.custom_metadata
        facts = [json.loads(msg.data) for *_r, msg in bag.messages(EPISODE_TOPIC)]
    assert meta['qail_ros.episode.complete'] == 'false'
    assert meta['qail_ros.episode.end_reason'] == 'shutdown'
    assert facts[-1]['end_reason'] == 'shutdown' and len(facts) == 2
    assert 'episode 0 ended (shutdown' in err


def test_real_image_policy_rollout_to_dataset(runtime, tmp_path):
    """camera_source -> image_policy (real network) -> fp_recorder -> bag -> data set: every
    sample's teacher raw outputs and action come from the frame they were computed from."""
    pytest.importorskip('torch')
    from qail_ros.dataset import QailDataset, build_dataset
    from qail_ros.nodes.image_policy import ImagePolicy
    rec = _recorder(tmp_path / 'bags', raw_outputs_topic='image_policy/raw_outputs',
                    timing_topic='image_policy/policy_timing',
                    action_topics=['cmd_twist:geometry_msgs/msg/TwistStamped', 'action'])
    policy = ImagePolicy(cli_args=_args(image_size=32, log_period_s=100.0))
    policy.on_configure()
    cam = _camera(30, rate_hz=30.0)
    rec.on_activate()
    policy.on_activate()
    cam.on_activate()
    runtime.spin_until(lambda: cam.finished, timeout_s=20)
    runtime.spin_until(lambda: rec.received['/image_policy/policy_timing'] >= policy.inferences
                       and policy.inferences > 0, timeout_s=10)
    runtime.spin(duration_s=0.3)
    _shutdown(cam, policy, rec)
    n = policy.inferences
    assert n >= 5
    bag_dir = _bags(tmp_path / 'bags')[0]
    with BagReader(bag_dir) as bag:
        ep = EpisodeInfo.from_metadata(bag.custom_metadata)
    topics = ep.pairing['topics']
    assert topics['/cmd_twist']['matched'] == n and topics['/cmd_twist']['unmatched'] == 0
    assert topics['/image_policy/raw_outputs']['matched'] == n
    assert topics['/image_policy/policy_timing']['matched'] == n
    assert topics['/action']['unstamped'] == n        # the plain action array has no stamp
    said = []
    # no topic map: the recorder's roles; the unstamped /action is left out (and said so)
    man = build_dataset([bag_dir], tmp_path / 'ds', val_fraction=0.0, progress=said.append)
    assert any("leaving out action topic(s) ['/action']" in line for line in said)
    assert man['topic_map']['action'] == ['/cmd_twist']
    assert man['frames'] == n and man['pairing']['samples_without_raw_outputs'] == 0
    ds = QailDataset(tmp_path / 'ds', split='all')
    s = ds[n - 1]
    raw = s['teacher.raw_outputs'].numpy()
    action = np.tanh(raw)                              # image_policy: action = tanh(raw)
    lin = s['action'].numpy()[:3]
    np.testing.assert_allclose(lin, action[:3] * 0.05, rtol=1e-4, atol=1e-6)


def test_disk_full_is_a_clear_error_and_keeps_what_was_written(runtime, tmp_path, monkeypatch,
                                                               caplog):
    import errno

    from qail_ros import bag as bag_module
    real_write = bag_module.BagWriter.write
    calls = []

    def filling_write(self, topic, msg, timestamp_ns=None):
        calls.append(topic)
        if len(calls) > 11:
            raise OSError(errno.ENOSPC, 'No space left on device')
        return real_write(self, topic, msg, timestamp_ns)

    monkeypatch.setattr(bag_module.BagWriter, 'write', filling_write)
    rec = _recorder(tmp_path, action_topics=[], raw_outputs_topic='')
    cam = _camera(30)
    rec.on_activate()
    cam.on_activate()
    with pytest.raises(BagError, match='disk is full'):   # fatal: the node stops (exit 2)
        runtime.spin_until(lambda: cam.finished, timeout_s=20)
        runtime.spin(duration_s=2.0)
    assert not rec.recording and 'disk is full' in rec.last_error
    assert 'intact' in rec.last_error
    _shutdown(cam, rec)
    with BagReader(_bags(tmp_path)[0]) as bag:
        assert not bag.recovered                               # closed after the error
        assert bag.topics['/image_raw'].count == 10            # 11 writes: facts + 10 frames
        assert bag.custom_metadata['qail_ros.episode.complete'] == 'false'
        frames = [msg for _t, _s, msg in bag.messages('/image_raw')]
    assert all(f.width == 32 for f in frames)


def test_split_by_duration_makes_parts_the_builder_joins(runtime, tmp_path):
    from qail_ros.dataset import build_dataset
    rec = _recorder(tmp_path / 'bags', split_duration_s=0.25)
    policy = StampedPolicy()
    cam = _camera(40, rate_hz=60.0)                   # ~0.67 s: three parts
    rec.on_activate()
    cam.on_activate()
    runtime.spin_until(lambda: cam.finished and policy.frames == 40, timeout_s=20)
    runtime.spin(duration_s=0.1)
    _shutdown(cam, policy, rec)
    parts = _bags(tmp_path / 'bags')
    assert len(parts) >= 2 and parts[1].name.endswith('_part01')
    total = 0
    for part in parts:
        with BagReader(part) as bag:
            assert bag.custom_metadata['qail_ros.episode.index'] == '0'
            total += bag.topics['/image_raw'].count
    assert total == 40
    man = build_dataset([tmp_path / 'bags'], tmp_path / 'ds', val_fraction=0.0)
    assert len(man['episodes']) == 1 and len(man['episodes'][0]['bags']) == len(parts)
    assert man['frames'] == 18                          # 20 actions, 2 with a wrong stamp


def test_paired_rate_limit_keeps_only_frames_the_policy_acted_on(runtime, tmp_path):
    """rate_limit_paired: the 5 Hz camera limit picks among frames that got an action, so
    every recorded frame is a training sample (plain limiting would keep about half)."""
    from qail_ros.dataset import build_dataset
    rec = _recorder(tmp_path / 'bags', rate_limits=['image_raw:5'], rate_limit_paired=True)
    policy = StampedPolicy()
    cam = _camera(60, rate_hz=30.0)
    rec.on_activate()
    cam.on_activate()
    runtime.spin_until(lambda: cam.finished and policy.frames == 60, timeout_s=20)
    runtime.spin(duration_s=0.1)
    _shutdown(cam, policy, rec)
    bag_dir = _bags(tmp_path / 'bags')[0]
    with BagReader(bag_dir) as bag:
        images = bag.topics['/image_raw'].count
        ep = EpisodeInfo.from_metadata(bag.custom_metadata)
        stamps = [m.ns_from_time(msg.header.stamp) for *_r, msg in bag.messages('/image_raw')]
    assert 9 <= images <= 11                                   # 2 s at 5 Hz
    assert stamps == sorted(stamps)
    t = ep.pairing['topics']['/cmd_twist']
    assert t['matched'] == images and t['unmatched'] == 3      # 30 actions, 3 bogus stamps
    assert t['matched'] + t['matched_not_recorded'] + t['unmatched'] == 30
    assert rec.rate_skipped['/image_raw'] == 60 - images
    man = build_dataset([bag_dir], tmp_path / 'ds', val_fraction=0.0)
    assert man['frames'] == images                             # every recorded frame is used
