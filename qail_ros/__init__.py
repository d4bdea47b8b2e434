"""qail_ros: quantized imitation-learning policies on ROS 2.

Importing this package is cheap on purpose: it loads no torch, no model and touches no GPU.
Subpackages:
  runtime   the one seam between nodes and ROS 2 (rclpy, or the embedded Zenoh runtime)
  messages  ROS 2 message types and CDR (rosbags typestore), identical in both runtimes
  nodes     one module per node (camera source, policies, recorder, monitor)
  cli       the `qail-ros` command line
"""

__version__ = '0.1.0'
__all__ = ['__version__']
