"""Message -> float vector for actions, states and commands (the types robots publish)."""
from __future__ import annotations

from typing import Any

import numpy as np

from qail_ros.errors import BagError

__all__ = ['to_vector', 'VECTOR_TYPES']

VECTOR_TYPES = (
    'std_msgs/msg/Float32MultiArray', 'std_msgs/msg/Float64MultiArray', 'std_msgs/msg/Float32',
    'std_msgs/msg/Float64', 'geometry_msgs/msg/Twist', 'geometry_msgs/msg/TwistStamped',
    'geometry_msgs/msg/Pose', 'geometry_msgs/msg/PoseStamped', 'sensor_msgs/msg/JointState',
    'geometry_msgs/msg/Vector3', 'geometry_msgs/msg/Vector3Stamped',
)


def _xyz(v) -> list[float]:
    return [float(v.x), float(v.y), float(v.z)]


def to_vector(msg: Any) -> np.ndarray:
    """float64 values: MultiArray data after data_offset; Twist linear+angular (6); Pose
    position+orientation xyzw (7); JointState positions; Float32/64 (1); Vector3 (3)."""
    mtype = msg.__msgtype__
    if mtype.endswith('MultiArray'):
        return np.asarray(msg.data[int(msg.layout.data_offset):], dtype=np.float64)
    if mtype in ('std_msgs/msg/Float32', 'std_msgs/msg/Float64'):
        return np.array([float(msg.data)])
    if mtype == 'geometry_msgs/msg/TwistStamped':
        msg = msg.twist
        mtype = 'geometry_msgs/msg/Twist'
    if mtype == 'geometry_msgs/msg/Twist':
        return np.array(_xyz(msg.linear) + _xyz(msg.angular))
    if mtype == 'geometry_msgs/msg/PoseStamped':
        msg = msg.pose
        mtype = 'geometry_msgs/msg/Pose'
    if mtype == 'geometry_msgs/msg/Pose':
        o = msg.orientation
        return np.array(_xyz(msg.position) + [float(o.x), float(o.y), float(o.z), float(o.w)])
    if mtype == 'sensor_msgs/msg/JointState':
        return np.asarray(msg.position, dtype=np.float64)
    if mtype == 'geometry_msgs/msg/Vector3Stamped':
        return np.array(_xyz(msg.vector))
    if mtype == 'geometry_msgs/msg/Vector3':
        return np.array(_xyz(msg))
    raise BagError(f'cannot turn {mtype} into an action/state vector; supported: '
                   f'{", ".join(VECTOR_TYPES)} (republish as Float32MultiArray)')
