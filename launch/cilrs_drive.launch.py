"""cilrs_drive: the CILRS policy driving the simulator closed-loop through carla-ros-bridge topics.

    qail-ros launch cilrs_drive [episodes:=10] [density:=dense] [town:=merge] [seed:=0]
    qail-ros launch cilrs_drive engine:=models/cilrs-highway/cilrs_highway_w4a4_int8.safetensors
    ros2 launch qail_ros cilrs_drive.launch.py [episodes:=10] ...

Default: the TRAINED CILRS shipped in models/cilrs-highway/ (ResNet-18, 160x72 top-down camera
covering 50 m, trained on the `highway` town; README.md there has its closed-loop figures),
as its W8A8 onnxruntime engine. `engine:=` picks another engine file (it overrides the
`engine` of the parameter file); the camera arguments must then match that engine's input
(cilrs_policy resizes frames of another size, which a trained model does not expect).
The untrained 900x256 engine of `qail-ros export cilrs --resnet 18 --kinds w8a8_ort`
(the carla-roach camera size, for latency only: it does not drive) runs with
    engine:=models/cilrs/cilrs_r18_w8a8_ort.onnx image_width:=900 image_height:=256 view_m:=80

env_bridge (qail_ros.driving: highway-env roads rendered on CPU) publishes the camera
(/carla/ego_vehicle/rgb_front/image), speedometer and navigation command and applies
/carla/ego_vehicle/vehicle_control_cmd; cilrs_policy (config/cilrs_drive.yaml: threads, topics)
answers each frame. The bridge runs in CARLA-like synchronous mode: a step waits for the
control answering the last frame (at most control_timeout_s), so a slow engine slows the
simulated world instead of driving blind. Each finished route is logged and published on
/env_bridge/episode (JSON: success, collision, route completion, running metrics); with
`episodes` > 0 the launch ends after that many routes (route seeds seed..seed+episodes-1, the
seeds of `qail-ros driving eval`, so the figures are comparable).

With a real CARLA server use carla-ros-bridge itself and launch only cilrs_policy: the topics
are the same. Only LaunchDescription, DeclareLaunchArgument, Shutdown (as on_exit),
LaunchConfiguration, launch_ros Node and get_package_share_directory may be used: that is the
subset `qail-ros launch` understands.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

#: the shipped trained engine (relative: cwd, then the package share directory)
ENGINE = 'models/cilrs-highway/cilrs_highway_w8a8_ort.onnx'


def generate_launch_description():
    share = get_package_share_directory('qail_ros')
    return LaunchDescription([
        DeclareLaunchArgument(
            'required_nodes', default_value='cilrs_policy',
            description='nodes the launch cannot run without: if one exits, every node is '
                        'stopped and qail-ros launch exits 1 (\'\' = none)'),
        DeclareLaunchArgument(
            'params_file', default_value=os.path.join(share, 'config', 'cilrs_drive.yaml'),
            description='ROS 2 parameter file of cilrs_policy (threads, topics)'),
        DeclareLaunchArgument('engine', default_value=ENGINE,
                              description='CILRS engine file (manifest next to it); overrides '
                                          'the engine of params_file'),
        DeclareLaunchArgument('town', default_value='highway',
                              description='road layout: highway (train), merge, roundabout'),
        DeclareLaunchArgument('density', default_value='regular',
                              description='traffic: empty, regular or dense'),
        DeclareLaunchArgument('seed', default_value='0',
                              description='route seed of the first episode (then +1 each)'),
        DeclareLaunchArgument('image_width', default_value='160',
                              description='camera width (the shipped engines take 160x72)'),
        DeclareLaunchArgument('image_height', default_value='72',
                              description='camera height'),
        DeclareLaunchArgument('view_m', default_value='50.0',
                              description='metres the top-down camera covers across its width '
                                          '(the shipped engines: 50)'),
        DeclareLaunchArgument('episodes', default_value='0',
                              description='routes to drive, then the launch ends; 0 = until '
                                          'stopped'),
        DeclareLaunchArgument('rate_hz', default_value='10.0',
                              description='simulation steps per wall-clock second at most (the '
                                          'simulated step is 0.1 s)'),
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
                'view_m': LaunchConfiguration('view_m'),
                'episodes': LaunchConfiguration('episodes'),
                'rate_hz': LaunchConfiguration('rate_hz'),
                'synchronous': True,
                'control_timeout_s': 1.0,
                'shutdown_when_done': True,
            }],
            output='screen',
            on_exit=Shutdown(reason='the episodes are done'),
        ),
        Node(
            package='qail_ros',
            executable='cilrs_policy',
            name='cilrs_policy',
            parameters=[LaunchConfiguration('params_file'),
                        {'engine': LaunchConfiguration('engine')}],
            output='screen',
        ),
    ])
