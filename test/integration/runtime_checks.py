"""In-process checks of RclpyRuntime, run in the ROS venv by test_rclpy_runtime.py.

Each check returns what it observed; the script prints them as one JSON object and the test
asserts on it (the test process has no rclpy). Log lines go to stderr through rcutils, where
the test reads them.
"""
from __future__ import annotations

import json
import sys
import time

from qail_ros import messages
from qail_ros.runtime import SENSOR_DATA, Node, QoS, get_runtime


def check_qos() -> dict:
    from qail_ros.runtime.rclpy_runtime import to_qos_profile
    prof = to_qos_profile(SENSOR_DATA)
    keep_all = to_qos_profile(QoS(depth=3, durability='transient_local', history='keep_all'))
    return {'sensor': [prof.depth, prof.reliability.name, prof.durability.name,
                       prof.history.name],
            'keep_all': [keep_all.reliability.name, keep_all.durability.name,
                         keep_all.history.name],
            'int': to_qos_profile(7).depth}


def check_composed_nodes(runtime) -> dict:
    """Two nodes in one process, each with its own node-level --ros-args."""
    a = Node('a', namespace='ns', cli_args=['--ros-args', '-r', '__node:=renamed', '-p',
                                            'x:=5', '-p', 'f:=3'])
    b = Node('b', cli_args=['--ros-args', '-p', 'x:=7', '-r', 'chatter:=/remapped'])
    out = {'names': [a.get_fully_qualified_name(), b.get_fully_qualified_name()],
           'x': [a.declare_parameter('x', 0).value, b.declare_parameter('x', 0).value]}
    f = a.declare_parameter('f', 1.0).value
    out['f'] = [f, type(f).__name__, type(a.get_parameter('f').value).__name__]
    a.set_parameter('x', 11)
    out['x_after_set'] = a.get_parameter('x').value
    out['lst'] = a.declare_parameter('lst', [1, 2]).value
    out['none'] = a.declare_parameter('nothing', None).value
    out['resolved'] = [a._handle.resolve_topic('image'), b._handle.resolve_topic('chatter')]

    got = []
    pub = a.create_publisher('std_msgs/msg/String', '/chatter_abs', 10)
    b.create_subscription('std_msgs/msg/String', '/chatter_abs', got.append, 10)
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        pub.publish(messages.new('std_msgs/msg/String', data='in process'))
        runtime.spin([a, b], duration_s=0.1)
    out['received'] = [m.data for m in got[:1]]
    out['received_type'] = messages.type_name(got[0]) if got else None
    out['subscription_count'] = pub.get_subscription_count()
    pub.publish(messages.serialize(messages.new('std_msgs/msg/String', data='raw')))
    try:
        pub.publish(messages.new('std_msgs/msg/Header'))
        out['wrong_type'] = None
    except TypeError as exc:
        out['wrong_type'] = str(exc)
    out['now_minus_wall_s'] = (a.now_ns() - time.time_ns()) / 1e9

    start = time.monotonic()
    runtime.spin([a, b], duration_s=0.5)
    out['spin_0_5_took_s'] = time.monotonic() - start

    def log_check():
        a.get_logger().warning('value %d of %s', 5, 'x')
        for _ in range(3):  # rclpy's `once` filter: once per call site
            a.get_logger().info('once per site', once=True)
        a.get_logger().debug('hidden %s', 'debug')

    log_check()
    a.destroy_node()
    b.destroy_node()
    return out


def check_shutdown_paths(runtime) -> dict:
    import rclpy
    out = {}
    node = Node('stopper')
    node.create_timer(0.05, lambda: rclpy.shutdown())
    start = time.monotonic()
    runtime.spin([node])  # an external shutdown ends spin without an exception
    out['external_shutdown_s'] = time.monotonic() - start
    out['ok_after_external'] = runtime.ok()
    runtime.shutdown()
    runtime.shutdown()  # twice is fine

    runtime.init(['prog'])
    node = Node('interrupted')

    def interrupt():
        raise KeyboardInterrupt

    node.create_timer(0.05, interrupt)
    try:
        runtime.spin([node], duration_s=5)
        out['keyboard_interrupt'] = 'not raised'
    except KeyboardInterrupt:
        out['keyboard_interrupt'] = 'propagated'
    out['ok_after_interrupt'] = runtime.ok()
    runtime.shutdown()
    out['ok_after_shutdown'] = runtime.ok()
    return out


def main() -> int:
    runtime = get_runtime()
    results = {'runtime': type(runtime).__name__,
               'rest': runtime.init(['prog', 'a', '--ros-args', '--log-level', 'info', '--',
                                     'b']),
               'qos': check_qos(),
               'composed': check_composed_nodes(runtime)}
    results['shutdown'] = check_shutdown_paths(runtime)
    print(json.dumps(results), flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
