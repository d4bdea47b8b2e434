"""Message -> float vector for actions, states and commands (the types robots publish).

    Float32MultiArray, Float64MultiArray   data[layout.data_offset:] (policy_io's stamp
                                           prefix skipped)
    Float32, Float64                       [data]
    Twist, TwistStamped                    linear xyz, angular xyz (6)
    Pose, PoseStamped                      position xyz, orientation xyzw (7)
    Vector3, Vector3Stamped                xyz (3)
    JointState                             position (one per joint)
    JointTrajectoryPoint                   positions (velocities when positions is empty)
    JointTrajectory                        its first point, as above (the next setpoint)
    CarlaEgoVehicleControl                 throttle, steer, brake (3; CARLA's ranges
                                           [0, 1], [-1, 1], [0, 1])

Other types (a robot's own messages, decoded from the definitions in its bag) raise a BagError
naming the type and these; `dataset build` checks every mapped topic's type before it reads.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from qail_ros.errors import BagError

__all__ = ['to_vector', 'VECTOR_TYPES', 'IMAGE_TYPES', 'ROLE_TYPES', 'check_role_type']

VECTOR_TYPES = (
    'std_msgs/msg/Float32MultiArray', 'std_msgs/msg/Float64MultiArray', 'std_msgs/msg/Float32',
    'std_msgs/msg/Float64', 'geometry_msgs/msg/Twist', 'geometry_msgs/msg/TwistStamped',
    'geometry_msgs/msg/Pose', 'geometry_msgs/msg/PoseStamped', 'sensor_msgs/msg/JointState',
    'geometry_msgs/msg/Vector3', 'geometry_msgs/msg/Vector3Stamped',
    'trajectory_msgs/msg/JointTrajectory', 'trajectory_msgs/msg/JointTrajectoryPoint',
    'carla_msgs/msg/CarlaEgoVehicleControl',
)
IMAGE_TYPES = ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage')
#: what each topic-map role accepts
ROLE_TYPES = {
    'images': IMAGE_TYPES,
    'state': VECTOR_TYPES,
    'command': VECTOR_TYPES,
    'action': VECTOR_TYPES,
    'raw_outputs': ('std_msgs/msg/Float64MultiArray', 'std_msgs/msg/Float32MultiArray'),
    'instruction': ('std_msgs/msg/String',),
}


def _norm(msgtype: str) -> str:
    parts = msgtype.strip('/').split('/')
    return '/'.join([parts[0], 'msg', parts[1]]) if len(parts) == 2 else '/'.join(parts)


def check_role_type(topic: str, msgtype: str, role: str, bag: str = '') -> None:
    """BagError naming topic, type and the accepted types when `msgtype` cannot fill `role`
    (a topic-map role: images.<name>, state, command, action, raw_outputs, instruction)."""
    accepted = ROLE_TYPES[role.split('.')[0]]
    if _norm(msgtype) in accepted:
        return
    where = f'bag {bag}: ' if bag else ''
    raise BagError(f"{where}topic '{topic}' is {msgtype}, which cannot be the topic map's "
                   f"{role}: it accepts {', '.join(accepted)}. Map another topic, or "
                   'republish it as one of these (e.g. Float32MultiArray)')


def _xyz(v) -> list[float]:
    return [float(v.x), float(v.y), float(v.z)]


def _point(point) -> np.ndarray:
    values = point.positions if len(point.positions) else point.velocities
    return np.asarray(values, dtype=np.float64)


def to_vector(msg: Any) -> np.ndarray:
    """float64 values of a message (see the module table)."""
    mtype = _norm(msg.__msgtype__)
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
    if mtype == 'trajectory_msgs/msg/JointTrajectoryPoint':
        return _point(msg)
    if mtype == 'trajectory_msgs/msg/JointTrajectory':
        if not msg.points:
            raise BagError('a JointTrajectory with no points has no action vector; drop such '
                           'messages or map a JointTrajectoryPoint topic')
        return _point(msg.points[0])
    if mtype == 'carla_msgs/msg/CarlaEgoVehicleControl':
        return np.array([float(msg.throttle), float(msg.steer), float(msg.brake)])
    raise BagError(f'cannot turn {mtype} into an action/state vector; supported: '
                   f'{", ".join(VECTOR_TYPES)} (republish as Float32MultiArray)')
