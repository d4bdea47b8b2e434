"""`dataset build` on bags from other robots: role types checked up front, CompressedImage,
several cameras, the action / state types robots publish, tolerance pairing, ROS 1 bags."""
import sys
from pathlib import Path

import numpy as np
import pytest

from qail_ros import image as im
from qail_ros import messages as m
from qail_ros.bag import BagWriter
from qail_ros.dataset import TopicMap, build_dataset
from qail_ros.dataset.extract import to_vector
from qail_ros.errors import BagError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'bags'))

N = 8


def _stamp(ns):
    return m.time_from_ns(ns)


def _header(ns, frame='base'):
    return m.new('std_msgs/msg/Header', stamp=_stamp(ns), frame_id=frame)


def _arm_bag(path: Path, jitter_ns: int = 0) -> Path:
    """A manipulator as `ros2 bag record` sees it: a jpeg wrist camera, a png scene camera,
    joint states, and JointTrajectory commands stamped `jitter_ns` after their frame."""
    with BagWriter(path, flush_interval_s=0) as bag:
        for i in range(N):
            t = 5_000_000_000 + i * 100_000_000
            frame = np.full((12, 16, 3), 20 * i, np.uint8)
            bag.write('/wrist/image_raw/compressed',
                      im.compress(frame, 'rgb8', fmt='jpeg', stamp=_stamp(t)), t)
            bag.write('/scene/image_raw/compressed',
                      im.compress(frame[::2, ::2].copy(), 'rgb8', fmt='png', stamp=_stamp(t)),
                      t)
            bag.write('/joint_states', m.new(
                'sensor_msgs/msg/JointState', header=_header(t), name=['a', 'b'],
                position=np.array([i, -i], np.float64)), t)
            point = m.new('trajectory_msgs/msg/JointTrajectoryPoint',
                          positions=np.array([i + 0.5, -i - 0.5]))
            bag.write('/arm/command', m.new('trajectory_msgs/msg/JointTrajectory',
                                            header=_header(t + jitter_ns), joint_names=['a', 'b'],
                                            points=[point]), t + jitter_ns + 1000)
            bag.write('/note', m.new('std_msgs/msg/String', data='x'), t)
    return path


def _map(**kw) -> TopicMap:
    return TopicMap.from_dict({'images': {'wrist': '/wrist/image_raw/compressed',
                                          'scene': '/scene/image_raw/compressed'},
                               'state': ['/joint_states'], 'action': ['/arm/command'], **kw})


def test_compressed_cameras_joint_state_and_trajectory(tmp_path):
    bag = _arm_bag(tmp_path / 'arm')
    man = build_dataset([bag], tmp_path / 'ds', topic_map=_map(), val_fraction=0.0)
    assert man['frames'] == N
    feats = man['features']
    assert feats['observation.images.wrist']['shape'] == [12, 16, 3]
    assert feats['observation.images.scene']['shape'] == [6, 8, 3]
    from safetensors.numpy import load_file
    data = load_file(str(tmp_path / 'ds' / man['shards'][0]['file']))
    np.testing.assert_allclose(data['action'][:, 0], np.arange(N) + 0.5)
    np.testing.assert_allclose(data['observation.state'][:, 1], -np.arange(N))
    assert abs(int(data['observation.images.wrist'][3].mean()) - 60) <= 2     # jpeg
    assert (data['observation.images.scene'][5] == 100).all()                # png exact


def test_stamps_within_a_tolerance_pair_and_are_counted(tmp_path):
    bag = _arm_bag(tmp_path / 'arm', jitter_ns=3_000_000)       # commands 3 ms late
    with pytest.raises(BagError, match='no samples'):
        build_dataset([bag], tmp_path / 'exact', topic_map=_map())
    man = build_dataset([bag], tmp_path / 'tol', topic_map=_map(stamp_tolerance_ms=5),
                        val_fraction=0.0)
    assert man['frames'] == N
    assert man['pairing']['paired_within_tolerance'] == N
    assert man['filters']['stamp_tolerance_ms'] == 5


def test_a_topic_of_the_wrong_type_is_named_before_reading(tmp_path):
    bag = _arm_bag(tmp_path / 'arm')
    tmap = TopicMap.from_dict({'images': {'wrist': '/wrist/image_raw/compressed'},
                               'action': ['/note']})
    with pytest.raises(BagError) as err:
        build_dataset([bag], tmp_path / 'ds', topic_map=tmap)
    text = str(err.value)
    assert "topic '/note' is std_msgs/msg/String" in text and "topic map's action" in text
    assert 'geometry_msgs/msg/TwistStamped' in text and 'SerdeError' not in text
    tmap = TopicMap.from_dict({'images': {'wrist': '/joint_states'}, 'action': ['/arm/command']})
    with pytest.raises(BagError, match="topic '/joint_states'.*sensor_msgs/msg/CompressedImage"):
        build_dataset([bag], tmp_path / 'ds2', topic_map=tmap)


def test_ros1_bag_builds_a_dataset(tmp_path):
    from test_foreign import _ros1_bag
    bag = _ros1_bag(tmp_path / 'robot.bag', n=N)
    tmap = TopicMap.from_dict({'images': {'image': '/camera/image_raw'},
                               'action': ['/cmd_vel']})
    man = build_dataset([bag], tmp_path / 'ds', topic_map=tmap, val_fraction=0.0)
    assert man['frames'] == N and man['sources'][0]['storage'] == 'rosbag1'
    from safetensors.numpy import load_file
    data = load_file(str(tmp_path / 'ds' / man['shards'][0]['file']))
    np.testing.assert_allclose(data['action'][:, 0], np.arange(N))
    np.testing.assert_allclose(data['action'][:, 5], -np.arange(N))
    assert (data['observation.images.image'][2] == 2).all()


def test_vectors_of_every_documented_type():
    from qail_ros.msg_defs import register_carla_msgs
    register_carla_msgs()
    v3 = m.new('geometry_msgs/msg/Vector3', x=1.0, y=2.0, z=3.0)
    twist = m.new('geometry_msgs/msg/Twist', linear=v3, angular=v3)
    cases = [
        (twist, [1, 2, 3, 1, 2, 3]),
        (m.new('geometry_msgs/msg/TwistStamped', twist=twist), [1, 2, 3, 1, 2, 3]),
        (m.new('sensor_msgs/msg/JointState', position=np.array([0.1, 0.2])), [0.1, 0.2]),
        (m.new('trajectory_msgs/msg/JointTrajectoryPoint',
               velocities=np.array([4.0])), [4.0]),
        (m.new('trajectory_msgs/msg/JointTrajectory', points=[m.new(
            'trajectory_msgs/msg/JointTrajectoryPoint', positions=np.array([7.0, 8.0]))]),
         [7, 8]),
        (m.new('std_msgs/msg/Float32MultiArray', data=np.array([9, 1, 2], np.float32)),
         [9, 1, 2]),
        (m.new('std_msgs/msg/Float64MultiArray', data=np.array([1.0, 2.0, 5.0]),
               layout=m.new('std_msgs/msg/MultiArrayLayout', data_offset=2)), [5.0]),
        (m.new('carla_msgs/msg/CarlaEgoVehicleControl', throttle=0.5, steer=-0.25,
               brake=0.0), [0.5, -0.25, 0.0]),
    ]
    for msg, want in cases:
        np.testing.assert_allclose(to_vector(msg), want, err_msg=msg.__msgtype__)
    with pytest.raises(BagError, match='no points'):
        to_vector(m.new('trajectory_msgs/msg/JointTrajectory'))
