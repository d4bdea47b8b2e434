"""cilrs_drive: the CILRS policy driving the simulator closed-loop through carla-ros-bridge topics.

    qail-ros launch cilrs_drive [town:=roundabout] [density:=dense] [seed:=3] [--duration 60]
    ros2 launch qail_ros cilrs_drive.launch.py [town:=merge] ...

env_bridge (qail_ros.driving: highway-env roads rendered on CPU) publishes the camera
(/carla/ego_vehicle/rgb_front/image), speedometer and navigation command and applies
/carla/ego_vehicle/vehicle_control_cmd; cilrs_policy (config/cilrs_drive.yaml: engine, threads,
topics) answers each frame. The bridge runs in CARLA-like synchronous mode: a step waits for the
control answering the last frame (at most control_timeout_s), so a slow engine slows the
simulated world instead of driving blind. Each finished route is logged and published on
/env_bridge/episode (JSON: success, collision, route completion, running metrics).

With a real CARLA server use carla-ros-bridge itself and launch only cilrs_policy: the topics
are the same. The camera size should match the engine's input (cilrs_policy resizes otherwise).
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
    return LaunchDescription([
        DeclareLaunchArgument(
            'params_file', default_value=os.path.join(share, 'config', 'cilrs_drive.yaml'),
            description='ROS 2 parameter file of cilrs_policy (engine, threads, topics)'),
        DeclareLaunchArgument('town', default_value='highway',
                              description='road layout: highway (train), merge, roundabout'),
        DeclareLaunchArgument('density', default_value='regular',
                              description='traffic: empty, regular or dense'),
        DeclareLaunchArgument('seed', default_value='0',
                              description='route seed of the first episode (then +1 each)'),
        DeclareLaunchArgument('image_width', default_value='900',
                              description='camera width (the default engine takes 900x256)'),
        DeclareLaunchArgument('image_height', default_value='256',
                              description='camera height'),
        DeclareLaunchArgument('episodes', default_value='0',
                              description='routes to drive; 0 = until stopped'),
        Node(
            package='qail_ros',
            executable='env_bridge',
            name='env_bridge',
            parameters=[{
                'town': LaunchConfiguration('town'),
                'density': LaunchConfiguration('density'),
                'seed': LaunchConfiguration('seed'),
                'image_width': LaunchConfiguration('image_width'),
                'image_height': LaunchConfiguration('image_height'),
                'episodes': LaunchConfiguration('episodes'),
                'rate_hz': 10.0,
                'synchronous': True,
                'control_timeout_s': 1.0,
            }],
            output='screen',
        ),
        Node(
            package='qail_ros',
            executable='cilrs_policy',
            name='cilrs_policy',
            parameters=[LaunchConfiguration('params_file')],
            output='screen',
        ),
    ])
