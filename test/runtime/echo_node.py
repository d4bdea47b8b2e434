"""A node for the two-process tests: echoes std_msgs/String from 'ping' to 'pong'.

Run as a script (`python test/runtime/echo_node.py --ros-args ...`); exits cleanly on SIGINT.
"""
import sys

from qail_ros import messages as m
from qail_ros.runtime import Node, nodes_main


class Echo(Node):
    def __init__(self, **kwargs):
        super().__init__('echo', **kwargs)
        self.pub = self.create_publisher('std_msgs/msg/String', 'pong', 10)
        self.create_subscription('std_msgs/msg/String', 'ping', self.ping_callback, 10)
        self.get_logger().info('echo ready')

    def ping_callback(self, msg):
        self.pub.publish(m.new('std_msgs/msg/String', data='echo:' + msg.data))


if __name__ == '__main__':
    sys.exit(nodes_main([Echo], sys.argv, duration_s=float(sys.argv[1])
                        if len(sys.argv) > 1 and not sys.argv[1].startswith('-') else None))
