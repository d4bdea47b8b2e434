"""qail_ros.messages: construction with defaults, CDR and type identity."""
import numpy as np
import pytest

from qail_ros import messages as m
from qail_ros.errors import UnknownMessageTypeError


def test_new_fills_ros_defaults():
    twist = m.new('geometry_msgs/msg/TwistStamped')
    assert twist.header.frame_id == ''
    assert twist.header.stamp.sec == 0 and twist.twist.linear.x == 0.0
    arr = m.new('std_msgs/msg/Float32MultiArray')
    assert arr.data.dtype == np.float32 and arr.data.size == 0


def test_new_rejects_unknown_field_naming_valid_ones():
    with pytest.raises(TypeError, match='fields are'):
        m.new('std_msgs/msg/String', text='x')


def test_ros1_style_name_is_accepted():
    assert m.get_class('sensor_msgs/Image') is m.get_class('sensor_msgs/msg/Image')


def test_cdr_round_trip_of_an_image_is_byte_exact():
    data = np.arange(12, dtype=np.uint8)
    img = m.new('sensor_msgs/msg/Image', header=m.new('std_msgs/msg/Header',
                stamp=m.time_from_ns(1_500_000_123), frame_id='cam'),
                height=2, width=2, encoding='rgb8', step=6, data=data)
    raw = m.serialize(img)
    # CDR little-endian encapsulation header, as every ROS 2 middleware writes it.
    assert raw[:4] == b'\x00\x01\x00\x00'
    back = m.deserialize(raw, 'sensor_msgs/msg/Image')
    assert back.header.frame_id == 'cam' and m.ns_from_time(back.header.stamp) == 1_500_000_123
    np.testing.assert_array_equal(back.data, data)
    assert m.serialize(back) == raw


def test_std_msgs_string_cdr_matches_ros2_layout():
    # uint32 length (incl. NUL) + bytes + NUL, after the 4-byte encapsulation header.
    raw = m.serialize(m.new('std_msgs/msg/String', data='hi'))
    assert raw == b'\x00\x01\x00\x00' + (3).to_bytes(4, 'little') + b'hi\x00'


def test_type_hash_matches_ros2_jazzy():
    # The RIHS01 hash rmw_zenoh puts in key expressions for std_msgs/msg/String on Jazzy.
    assert m.type_hash('std_msgs/msg/String') == (
        'RIHS01_df668c740482bbd48fb39d76a70dfd4bd59db1288021743503259e948f6b1a18')


def test_unknown_type_error_names_the_fix():
    with pytest.raises(UnknownMessageTypeError, match='register_msgdefs'):
        m.get_class('no_such_msgs/msg/Thing')
    with pytest.raises(UnknownMessageTypeError, match='sensor_msgs/msg/Image'):
        m.get_class('sensor_msgs/msg/Imagee')


def test_register_msgdefs_adds_a_package():
    m.register_msgdefs({'qail_test_msgs/msg/Pair': 'float32 a\nint32 b\n'})
    pair = m.new('qail_test_msgs/msg/Pair', a=1.5)
    assert m.deserialize(m.serialize(pair), 'qail_test_msgs/msg/Pair').a == 1.5


def test_time_conversion_round_trip():
    t = m.time_from_ns(12_345_678_901)
    assert (t.sec, t.nanosec) == (12, 345_678_901)
    assert m.ns_from_time(t) == 12_345_678_901
