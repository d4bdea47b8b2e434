"""Small nodes that the rclpy integration tier runs in the ROS venv, one per process.

    python test/integration/ros_nodes.py talker   [--ros-args ...]
    python test/integration/ros_nodes.py listener [--ros-args ...]
    python test/integration/ros_nodes.py probe    (plain rclpy, no qail_ros: a ROS 2 peer)

`talker` and `listener` are qail_ros nodes (`qail_ros.runtime.Node`, started by `run_node`, as
every node of the package is). They report on stdout, one JSON object a line, so the test reads
what happened; rcutils log lines go to stderr. `probe` is what an ordinary ROS 2 program would
be: it records the raw CDR of the talker's images, decodes them with the rosidl-generated
class, reports the QoS of image publishers as discovery shows them, and publishes a
`std_msgs/String` built by rclpy for the listener.
"""
from __future__ import annotations

import json
import sys

import numpy as np

IMAGE_TOPIC = 'image'
CHATTER_TOPIC = 'chatter'


def emit(event: str, **fields) -> None:
    print(json.dumps({'event': event, **fields}), flush=True)


def test_image(index: int, prefix: str, width: int = 4, height: int = 3):
    """The talker's image number `index`; the test rebuilds it to compare CDR bytes."""
    from qail_ros import messages
    data = ((np.arange(width * height * 3) + index) % 256).astype(np.uint8)
    header = messages.new('std_msgs/msg/Header', stamp=messages.time_from_ns(index * 1_000_000),
                          frame_id=f'{prefix}{index}')
    return messages.new('sensor_msgs/msg/Image', header=header, height=height, width=width,
                        encoding='rgb8', is_bigendian=0, step=width * 3, data=data)


def _runtime_report() -> dict:
    """Which runtime this process really uses (asked of the runtime, not assumed)."""
    import qail_ros.runtime as rt
    runtime = rt.get_runtime()
    report = {'runtime_name': rt.runtime_name(), 'runtime_class': type(runtime).__name__,
              'rclpy_loaded': 'rclpy' in sys.modules}
    if report['rclpy_loaded']:
        from rclpy.utilities import get_rmw_implementation_identifier

        from qail_ros.runtime.rclpy_runtime import rclpy_version
        report.update(rclpy_version=rclpy_version(), rmw=get_rmw_implementation_identifier())
    return report


def _make_nodes():
    from qail_ros.runtime import SENSOR_DATA, Node, QoS

    class Talker(Node):
        """Publishes `count` small rgb8 images once `wait_for_subscribers` peers listen."""

        def __init__(self, **kwargs):
            super().__init__('talker', **kwargs)
            self.rate_hz = self.declare_parameter('rate_hz', 30.0).value
            self.count = self.declare_parameter('count', 10).value
            self.frame_prefix = self.declare_parameter('frame_prefix', 'frame').value
            self.wait_for = self.declare_parameter('wait_for_subscribers', 1).value
            self.size = self.declare_parameter('size', [4, 3]).value
            self.best_effort = self.declare_parameter('best_effort', False).value
            self.quit_when_done = self.declare_parameter('quit_when_done', False).value
            qos = SENSOR_DATA if self.best_effort else QoS(depth=50)
            self.pub = self.create_publisher('sensor_msgs/msg/Image', IMAGE_TOPIC, qos)
            self.sent = 0
            emit('runtime', **_runtime_report())
            emit('params', node=self.get_fully_qualified_name(),
                 **{name: self.get_parameter(name).value
                    for name in sorted(self.declared_parameters)})

        def on_activate(self):
            self.timer = self.create_timer(1.0 / self.rate_hz, self.timer_callback)
            emit('active', topic=self.pub.topic, now_ns=self.now_ns())

        def timer_callback(self):
            if self.sent >= self.count or self.pub.get_subscription_count() < self.wait_for:
                return
            self.pub.publish(test_image(self.sent, self.frame_prefix, *self.size))
            self.get_logger().info('sent image %d of %d', self.sent + 1, self.count)
            self.sent += 1
            if self.sent == self.count:
                emit('sent_all', count=self.sent)
                if self.quit_when_done:
                    self.request_shutdown()      # Node.request_shutdown: the spin ends

        def on_deactivate(self):
            emit('deactivate', sent=self.sent, context_ok=self.runtime.ok())

        def on_cleanup(self):
            emit('cleanup')

    class Listener(Node):
        """Reports every image and chatter string it receives, decoded by qail_ros."""

        def __init__(self, **kwargs):
            super().__init__('listener', **kwargs)
            self.best_effort = self.declare_parameter('best_effort', False).value
            qos = SENSOR_DATA if self.best_effort else QoS(depth=50)
            self.create_subscription('sensor_msgs/msg/Image', IMAGE_TOPIC, self.image_callback,
                                     qos)
            self.create_subscription('std_msgs/msg/String', CHATTER_TOPIC,
                                     self.chatter_callback, 10)
            emit('runtime', **_runtime_report())
            emit('ready', node=self.get_fully_qualified_name())

        def image_callback(self, msg):
            from qail_ros import messages
            data = np.asarray(msg.data)
            content = ({'data': data.tolist()} if data.size <= 256 else
                       {'data_len': int(data.size), 'data_sum': int(data.sum(dtype=np.int64))})
            emit('image', frame_id=msg.header.frame_id,
                 stamp_ns=messages.ns_from_time(msg.header.stamp), width=msg.width,
                 height=msg.height, encoding=msg.encoding, type=messages.type_name(msg),
                 now_ns=self.now_ns(), **content)

        def chatter_callback(self, msg):
            emit('chatter', data=msg.data)

        def on_deactivate(self):
            emit('deactivate', context_ok=self.runtime.ok())

    return Talker, Listener


def probe_main() -> int:
    """A plain rclpy program: raw image bytes in, rclpy-built strings out."""
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from rclpy.qos import QoSProfile
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    rclpy.init(args=sys.argv)
    node = rclpy.create_node('probe')

    def on_raw(data: bytes) -> None:
        img = deserialize_message(data, Image)
        emit('raw_image', hex=data.hex(), native_hex=serialize_message(img).hex(),
             frame_id=img.header.frame_id, data=list(img.data), width=img.width,
             encoding=img.encoding)

    node.create_subscription(Image, IMAGE_TOPIC, on_raw, QoSProfile(depth=50), raw=True)
    pub = node.create_publisher(String, CHATTER_TOPIC, 10)
    sent = [0]

    seen_qos: set = set()

    def tick() -> None:
        pub.publish(String(data=f'native {sent[0]}'))
        sent[0] += 1
        # How the image publishers' QoS looks from another process, through DDS discovery.
        for info in node.get_publishers_info_by_topic('/' + IMAGE_TOPIC):
            key = (info.node_name, info.qos_profile.reliability.name,
                   info.qos_profile.durability.name)
            if key not in seen_qos and not key[0].startswith('_NODE_NAME_UNKNOWN'):
                seen_qos.add(key)
                emit('image_publisher', node=key[0], reliability=key[1], durability=key[2])

    node.create_timer(0.05, tick)
    emit('ready', node='probe')
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] not in ('talker', 'listener', 'probe'):
        print('usage: ros_nodes.py talker|listener|probe [--ros-args ...]', file=sys.stderr)
        return 64
    if argv[1] == 'probe':
        return probe_main()
    from qail_ros.runtime import run_node
    talker, listener = _make_nodes()
    return run_node(talker if argv[1] == 'talker' else listener, [argv[0], *argv[2:]])


if __name__ == '__main__':
    sys.exit(main())
