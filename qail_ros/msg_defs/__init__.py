"""Message definitions of packages the ROS 2 Jazzy typestore lacks (carla_msgs, ...).

`register_carla_msgs()` adds them to qail_ros.messages (idempotent). On ROS the installed
carla_msgs package supplies the type support that rclpy needs; the definitions here must (and
do) match it field for field, so the CDR bytes are the same.
"""
from __future__ import annotations

from qail_ros.msg_defs.carla_msgs import CARLA_MSGS, register_carla_msgs

__all__ = ['CARLA_MSGS', 'register_carla_msgs']
