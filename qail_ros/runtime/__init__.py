"""Runtime selection: real rclpy when importable, the embedded runtime otherwise.

`QAIL_ROS_RUNTIME=rclpy|embedded|auto` (default auto) overrides the choice. The choice is made
once per process; `get_runtime()` returns the same object every time.
"""
from __future__ import annotations

from qail_ros.runtime.api import DEFAULT_QOS, SENSOR_DATA, QoS, Runtime
from qail_ros.runtime.current import get_runtime, rclpy_available, runtime_name, set_runtime
from qail_ros.runtime.node import Node, Parameter, nodes_main, run_node

__all__ = ['Node', 'Parameter', 'QoS', 'SENSOR_DATA', 'DEFAULT_QOS', 'Runtime', 'get_runtime',
           'set_runtime', 'runtime_name', 'run_node', 'nodes_main', 'rclpy_available']
