"""physics_record: the FP state policy drives a physics task while fp_recorder records D_FP.

    qail-ros launch physics_record engine:=runs/wt/engines/cartpole-balance_fp32.safetensors \
        task:=cartpole-balance episodes:=10 output_dir:=runs/wt/bags
    ros2 launch qail_ros physics_record.launch.py engine:=... task:=... episodes:=10

physics_bridge steps the physics task and publishes /state and /image_raw (one stamp
per step); state_policy runs the FP engine (`qail-ros export` of the FP policy) and publishes
/action, /state_policy/raw_outputs and /state_policy/policy_timing stamped like the state;
fp_recorder (config/physics_record.yaml) writes one bag per episode, paired by stamp, with the
task, policy id, precision and engine hash in each bag's metadata. The bridge marks episode ends
on /fp_recorder/control and, after `episodes`, ends the launch (every bag is closed).
Next: `qail-ros dataset build OUTPUT_DIR -o DATASET` (docs/walkthrough.md).
Only LaunchDescription, DeclareLaunchArgument, Shutdown (as on_exit), LaunchConfiguration,
launch_ros Node and get_package_share_directory may be used: the subset `qail-ros launch`
understands.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description():
    share = get_package_share_directory('qail_ros')
    task = LaunchConfiguration('task')
    engine = LaunchConfiguration('engine')
    episodes = LaunchConfiguration('episodes')
    return LaunchDescription([
        DeclareLaunchArgument(
            'required_nodes', default_value='fp_recorder',
            description='nodes the launch cannot run without: if one exits, every node is '
                        'stopped and qail-ros launch exits 1 (\'\' = none)'),
        DeclareLaunchArgument('engine', default_value='',
                              description='FP engine of the task (qail-ros export FP_POLICY)'),
        DeclareLaunchArgument('task', default_value='cartpole-balance',
                              description='physics task: domain-task (walker-stand), gym:ENV_ID '
                                          'or module:factory'),
        DeclareLaunchArgument('episodes', default_value='10',
                              description='episodes to record, then the launch ends'),
        DeclareLaunchArgument('max_steps', default_value='0',
                              description="steps per episode; 0 = the task's own limit"),
        DeclareLaunchArgument('seed', default_value='1000',
                              description='seed of the first episode (then +1 each); '
                                          'evaluation uses 0.. so keep data seeds apart'),
        DeclareLaunchArgument('rate_hz', default_value='200.0',
                              description='simulation steps per second at most'),
        DeclareLaunchArgument('camera', default_value='schematic',
                              description='schematic | mujoco | auto'),
        DeclareLaunchArgument('output_dir', default_value='recordings',
                              description='directory the bags go to'),
        DeclareLaunchArgument(
            'params_file', default_value=os.path.join(share, 'config', 'physics_record.yaml'),
            description='fp_recorder parameters (topics, storage)'),
        Node(
            package='qail_ros',
            executable='physics_bridge',
            name='physics_bridge',
            parameters=[{
                'task': task,
                'episodes': episodes,
                'max_steps': LaunchConfiguration('max_steps'),
                'seed': LaunchConfiguration('seed'),
                'rate_hz': LaunchConfiguration('rate_hz'),
                'camera': LaunchConfiguration('camera'),
                'synchronous': True,
                'recorder_control_topic': '/fp_recorder/control',
                'wait_for_subscribers': 2,
                'shutdown_when_done': True,
            }],
            output='screen',
            on_exit=Shutdown(reason='the episodes are done'),
        ),
        Node(
            package='qail_ros',
            executable='state_policy',
            name='state_policy',
            parameters=[{'engine': engine}],
            output='screen',
        ),
        Node(
            package='qail_ros',
            executable='fp_recorder',
            name='fp_recorder',
            parameters=[LaunchConfiguration('params_file'), {
                'output_dir': LaunchConfiguration('output_dir'),
                'task': task,
                'engine_file': engine,
                'max_episodes': episodes,
            }],
            output='screen',
        ),
    ])
