"""physics_drive: a state-policy engine (e.g. the QAIL W4A4 export) drives a physics task.

    qail-ros launch physics_drive engine:=runs/wt/engines/cartpole-balance_w4a4.safetensors \
        task:=cartpole-balance episodes:=5
    ros2 launch qail_ros physics_drive.launch.py engine:=... task:=...

physics_bridge steps the task (synchronous: each step waits for the action answering the last
state) and logs each episode's return, also published as JSON on /physics_bridge/episode;
state_policy runs the engine. Episode seeds start at `seed` (0: the seeds `qail-ros eval` uses,
so the returns are comparable). After `episodes` (0 = until stopped) the launch ends.
Only LaunchDescription, DeclareLaunchArgument, Shutdown (as on_exit), LaunchConfiguration,
launch_ros Node and get_package_share_directory may be used: the subset `qail-ros launch`
understands.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument(
            'required_nodes', default_value='state_policy',
            description='nodes the launch cannot run without: if one exits, every node is '
                        'stopped and qail-ros launch exits 1 (\'\' = none)'),
        DeclareLaunchArgument('engine', default_value='',
                              description='engine file written by qail-ros export'),
        DeclareLaunchArgument('task', default_value='cartpole-balance',
                              description='physics task the engine was trained on: domain-task, '
                                          'gym:ENV_ID or module:factory'),
        DeclareLaunchArgument('episodes', default_value='5',
                              description='episodes to run, then the launch ends (0 = never)'),
        DeclareLaunchArgument('max_steps', default_value='0',
                              description="steps per episode; 0 = the task's own limit"),
        DeclareLaunchArgument('seed', default_value='0', description='first episode seed'),
        DeclareLaunchArgument('rate_hz', default_value='200.0',
                              description='simulation steps per second at most'),
        DeclareLaunchArgument('expect_precision', default_value='',
                              description="refuse engines of another precision ('' = any)"),
        Node(
            package='qail_ros',
            executable='physics_bridge',
            name='physics_bridge',
            parameters=[{
                'task': LaunchConfiguration('task'),
                'episodes': LaunchConfiguration('episodes'),
                'max_steps': LaunchConfiguration('max_steps'),
                'seed': LaunchConfiguration('seed'),
                'rate_hz': LaunchConfiguration('rate_hz'),
                'synchronous': True,
                'shutdown_when_done': True,
            }],
            output='screen',
            on_exit=Shutdown(reason='the episodes are done'),
        ),
        Node(
            package='qail_ros',
            executable='state_policy',
            name='state_policy',
            parameters=[{'engine': LaunchConfiguration('engine'),
                         'expect_precision': LaunchConfiguration('expect_precision')}],
            output='screen',
        ),
    ])
