"""orin_vla: camera -> OpenVLA policy -> 7-DoF end-effector actions, with latency/power monitor.

    ros2 launch qail_ros orin_vla.launch.py [instruction:='open the drawer'] [image_topic:=...]
    qail-ros launch orin_vla [instruction:='open the drawer'] [--composed] [--duration 30]

Both commands read this file: the same nodes, parameters (config/orin_vla.yaml, then the dicts
below) and remappings. The policy is `vla_policy` (OpenVLA, qail_ros.openvla) with the shipped
tiny randomly initialised checkpoint models/openvla-tiny; point it at the real model with
`model_path` / `unnorm_key` / `precision` in config/orin_vla.yaml (docs/openvla.md).

On a robot, point image_topic at the real camera and drop camera_source (or keep it to test).
Only LaunchDescription, DeclareLaunchArgument, LaunchConfiguration, launch_ros Node and
get_package_share_directory may be used: that is the subset `qail-ros launch` understands.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description():
    share = get_package_share_directory('qail_ros')
    params_file = LaunchConfiguration('params_file')
    image_topic = LaunchConfiguration('image_topic')
    return LaunchDescription([
        DeclareLaunchArgument(
            'required_nodes', default_value='vla_policy',
            description='nodes the launch cannot run without: if one exits, every node is '
                        'stopped and qail-ros launch exits 1 (\'\' = none)'),
        DeclareLaunchArgument(
            'params_file', default_value=os.path.join(share, 'config', 'orin_vla.yaml'),
            description='ROS 2 parameter file for every node of this launch'),
        DeclareLaunchArgument(
            'image_topic', default_value='/camera/image_raw',
            description='sensor_msgs/Image topic the camera publishes and the policy reads'),
        DeclareLaunchArgument(
            'instruction', default_value='pick up the red block',
            description='language instruction given to the policy'),
        Node(
            package='qail_ros',
            executable='camera_source',
            name='camera_source',
            parameters=[params_file],
            remappings=[('image_raw', image_topic)],
            output='screen',
        ),
        Node(
            package='qail_ros',
            executable='vla_policy',
            name='vla_policy',
            parameters=[params_file, {'instruction': LaunchConfiguration('instruction')}],
            remappings=[('image_raw', image_topic)],
            output='screen',
        ),
        Node(
            package='qail_ros',
            executable='power_monitor',
            name='power_monitor',
            parameters=[params_file],
            output='screen',
        ),
    ])
