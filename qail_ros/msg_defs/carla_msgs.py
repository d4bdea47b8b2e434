"""carla_msgs (carla-simulator/ros-carla-msgs, ROS 2 branch) definitions used by qail_ros."""
from __future__ import annotations

__all__ = ['CARLA_MSGS', 'register_carla_msgs']

#: type name -> .msg text, as carla_msgs defines them.
CARLA_MSGS = {
    'carla_msgs/msg/CarlaEgoVehicleControl': """\
std_msgs/Header header
float32 throttle
float32 steer
float32 brake
bool hand_brake
bool reverse
int32 gear
bool manual_gear_shift
""",
}


def register_carla_msgs() -> None:
    """Register the carla_msgs definitions with qail_ros.messages (safe to call again)."""
    from qail_ros import messages
    messages.register_msgdefs(CARLA_MSGS)
