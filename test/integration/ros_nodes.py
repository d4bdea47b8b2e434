"""Small nodes that the rclpy integration tier runs in the ROS venv, one per process.

    python test/integration/ros_nodes.py talker   [--ros-args ...]
    python test/integration/ros_nodes.py listener [--ros-args ...]
    python test/integration/ros_nodes.py probe    (plain rclpy, no qail_ros: a ROS 2 peer)
    python test/integration/ros_nodes.py policy   [--ros-args ...]  (a PolicyNode, numpy only)
    python test/integration/ros_nodes.py policy_probe  (plain rclpy: drives and watches it)

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


def _make_policy():
    """A policy node on the policy-node base whose "engine" is numpy (the ROS venv has no
    torch): linear.x of cmd_twist = the mean pixel / 255; safe command: a zero twist."""
    from qail_ros import messages
    from qail_ros.nodes.policy_base import (PolicyNode, PolicyOutputs, twist_message,
                                            zero_stamp_header)
    from qail_ros.runtime.params import ParameterSpec

    class MockPolicy(PolicyNode):
        NODE_NAME = 'mock_policy'
        PARAMETERS = (ParameterSpec('precision', 'fp32', 'needs a reload', read_only=True),)
        _loaded = False

        def create_outputs(self):
            self.twist_pub = self.create_publisher('geometry_msgs/msg/TwistStamped',
                                                   'cmd_twist', 10)

        @property
        def loaded(self):
            return self._loaded

        def load(self):
            self._loaded = True
            emit('runtime', **_runtime_report())

        def to_inputs(self, msg):
            from qail_ros.image import to_numpy
            return to_numpy(msg, desired='rgb8')

        def run(self, frame):
            return float(frame.mean()) / 255.0

        def to_outputs(self, msg, value):
            twist = twist_message([value, 0.0, 0.0], [0.0, 0.0, 0.0], msg.header.stamp, 'base')
            return PolicyOutputs(messages=[(self.twist_pub, twist)], raw=np.array([value]),
                                 raw_name='mean', value=value, log=f'mean {value:.3f}')

        def safe_outputs(self):
            zero = [0.0, 0.0, 0.0]
            return [(self.twist_pub, twist_message(zero, zero, zero_stamp_header().stamp,
                                                   'base'))]

        def on_parameter_change(self, name, value):
            emit('param_change', name=name, value=value)
            return super().on_parameter_change(name, value)

    messages.get_class('geometry_msgs/msg/TwistStamped')
    return MockPolicy


def policy_probe_main() -> int:
    """Plain rclpy: drives mock_policy through valid frames, a frame of an unknown encoding,
    parameter sets over the parameter service and a camera that stops; reports each step."""
    import time

    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import TwistStamped
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters
    from sensor_msgs.msg import Image

    rclpy.init(args=sys.argv)
    node = rclpy.create_node('policy_probe')
    twists: list = []
    diags: list = []
    node.create_subscription(TwistStamped, 'cmd_twist',
                             lambda m: twists.append((time.monotonic(), m)), 100)
    node.create_subscription(DiagnosticArray, '/diagnostics', diags.append, 100)
    pub = node.create_publisher(Image, 'image_raw', 10)
    client = node.create_client(SetParameters, '/mock_policy/set_parameters')

    def image(stamp_ns: int, encoding: str = 'rgb8') -> Image:
        msg = Image(height=4, width=4, encoding=encoding, step=12, data=bytes(range(48)))
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 10**9)
        return msg

    def stamp(m) -> int:
        return m.header.stamp.sec * 10**9 + m.header.stamp.nanosec

    def spin_until(pred, timeout: float, publish=None) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if publish is not None:
                publish()
            rclpy.spin_once(node, timeout_sec=0.05)
            if pred():
                return True
        return False

    counter = [1000]

    def valid():
        counter[0] += 1
        pub.publish(image(counter[0]))

    def normal_since(t):
        return [rx for rx, m in twists if rx >= t and stamp(m) != 0]

    def safe_since(t):
        return [rx for rx, m in twists if rx >= t and stamp(m) == 0]

    def diag_levels(t_index: int):
        out = []
        for arr in diags[t_index:]:
            for st in arr.status:
                if st.name.endswith(': policy'):
                    out.append((int.from_bytes(st.level, 'little') if isinstance(
                        st.level, bytes) else int(st.level),
                        {kv.key: kv.value for kv in st.values}))
        return out

    def set_param(name: str, value) -> dict:
        if isinstance(value, float):
            pv = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value)
        else:
            pv = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value)
        future = client.call_async(SetParameters.Request(
            parameters=[Parameter(name=name, value=pv)]))
        rclpy.spin_until_future_complete(node, future, timeout_sec=10.0)
        result = future.result().results[0]
        return {'successful': bool(result.successful), 'reason': result.reason}

    try:
        emit('ready', node='policy_probe')
        ok = spin_until(lambda: normal_since(0), 30.0, valid)
        emit('normal', ok=ok)
        # a frame of an unknown encoding
        t0 = time.monotonic()
        n_diag = len(diags)
        pub.publish(image(5, encoding='weird'))
        ok = spin_until(lambda: safe_since(t0), 5.0)
        emit('safe', ok=ok, ms=(safe_since(t0)[0] - t0) * 1e3 if ok else None)
        ok = spin_until(lambda: any(lv == 2 and v.get('rejected_encoding') == '1'
                                    for lv, v in diag_levels(n_diag)), 5.0)
        emit('diag_error', ok=ok)
        t1 = time.monotonic()
        ok = spin_until(lambda: normal_since(t1), 10.0, valid)
        emit('recovered', ok=ok)
        # parameters over the parameter service (what `ros2 param set` calls)
        if not client.wait_for_service(timeout_sec=10.0):
            emit('no_service')
        t2 = time.monotonic()
        spin_until(lambda: False, 1.0, valid)              # 20 frames/s, no rate limit
        before = len(normal_since(t2))
        emit('set_rate', **set_param('max_rate_hz', 2.0))
        t3 = time.monotonic()
        spin_until(lambda: False, 1.5, valid)
        after = len(normal_since(t3))
        emit('rate', before=before, after=after)
        emit('set_precision', **set_param('precision', 'int4'))
        emit('set_bad_rate', **set_param('max_rate_hz', -1.0))
        # the camera stops
        last = time.monotonic()
        ok = spin_until(lambda: safe_since(last), 5.0)
        emit('timeout', ok=ok, ms=(safe_since(last)[0] - last) * 1e3 if ok else None)
    finally:
        emit('done')
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    roles = ('talker', 'listener', 'probe', 'policy', 'policy_probe')
    if len(argv) < 2 or argv[1] not in roles:
        print(f'usage: ros_nodes.py {"|".join(roles)} [--ros-args ...]', file=sys.stderr)
        return 64
    if argv[1] == 'probe':
        return probe_main()
    if argv[1] == 'policy_probe':
        return policy_probe_main()
    if argv[1] == 'policy':
        from qail_ros.runtime import run_node
        return run_node(_make_policy(), [argv[0], *argv[2:]])
    from qail_ros.runtime import run_node
    talker, listener = _make_nodes()
    return run_node(talker if argv[1] == 'talker' else listener, [argv[0], *argv[2:]])


if __name__ == '__main__':
    sys.exit(main())
