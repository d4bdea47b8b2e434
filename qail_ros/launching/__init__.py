"""Launch descriptions without ROS 2: read a genuine ROS 2 launch file, run its nodes.

`ros2 launch qail_ros orin_vla.launch.py` and `qail-ros launch orin_vla` read the same file:

* `description`: evaluates `generate_launch_description()` (against `shim`, a stand-in for the
  subset of `launch` / `launch_ros` / `ament_index_python` the files use) into `NodeSpec`s:
  executable, name, namespace, parameters, remappings, arguments.
* `launcher`: starts those nodes as child processes (Ctrl-C forwarded, clean shutdown) or, with
  `--composed`, all in one process.

Nothing here imports torch, zenoh or rclpy at import time.
"""
from qail_ros.launching.description import (LaunchArgument, LaunchSpec, NodeSpec,
                                            available_launch_files, find_launch_file,
                                            load_launch_file, parse_launch_arguments)

__all__ = ['LaunchArgument', 'LaunchSpec', 'NodeSpec', 'available_launch_files',
           'find_launch_file', 'load_launch_file', 'parse_launch_arguments']
