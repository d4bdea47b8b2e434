"""EmbeddedRuntime in one process: executor, timers, QoS depth, intra-process passing,
parameters, names and logging."""
import re
import threading
import time

import numpy as np
import pytest

from qail_ros import messages as m
from qail_ros.errors import ParameterError
from qail_ros.runtime import SENSOR_DATA, Node, QoS, nodes_main
from qail_ros.runtime.embedded import EmbeddedRuntime, resolve_name

STRING = 'std_msgs/msg/String'


class Talker(Node):
    def __init__(self, name='talker', topic='chatter', qos=10, **kwargs):
        super().__init__(name, **kwargs)
        self.pub = self.create_publisher(STRING, topic, qos)

    def say(self, text):
        self.pub.publish(m.new(STRING, data=text))


class Listener(Node):
    def __init__(self, name='listener', topic='chatter', qos=10, **kwargs):
        super().__init__(name, **kwargs)
        self.got = []
        self.threads = set()
        self.sub = self.create_subscription(STRING, topic, self.chatter_callback, qos)

    def chatter_callback(self, msg):
        self.threads.add(threading.get_ident())
        self.got.append(msg)


# -- executor and timers ------------------------------------------------------------------
def test_timer_fires_periodically_on_the_spinning_thread(runtime):
    node = Node('ticker')
    ticks, threads = [], set()

    def tick_callback():
        ticks.append(time.monotonic_ns())
        threads.add(threading.get_ident())

    timer = node.create_timer(0.01, tick_callback)
    first_deadline = timer.next_ns
    start = time.monotonic()
    runtime.spin([node], duration_s=0.3)
    elapsed = time.monotonic() - start
    assert 0.3 <= elapsed < 1.0
    assert 10 <= len(ticks) <= 31
    assert threads == {threading.get_ident()}
    # Deadlines are first + k * period (missed ones skipped): the k-th tick is never early.
    assert all(t >= first_deadline + k * timer.period_ns for k, t in enumerate(ticks))
    timer.cancel()
    count = len(ticks)
    runtime.spin([node], duration_s=0.05)
    assert len(ticks) == count


def test_timer_deadlines_do_not_accumulate_callback_time(runtime):
    node = Node('slow')
    ticks = []

    def slow_callback():
        ticks.append(time.monotonic_ns())
        time.sleep(0.004)  # 40 % of the period: a drifting timer would fall behind

    timer = node.create_timer(0.01, slow_callback)
    first_deadline = timer.next_ns
    runtime.spin([node], duration_s=0.25)
    assert timer.fired >= 5
    # Every deadline stays on the grid first + k * period, whatever the callbacks cost.
    assert (timer.next_ns - first_deadline) % timer.period_ns == 0
    assert timer.next_ns - first_deadline == timer.period_ns * (timer.fired + timer.skipped)
    assert all(t >= first_deadline + k * timer.period_ns for k, t in enumerate(ticks))


def test_subscription_callbacks_run_on_spin_thread_when_published_from_another(runtime):
    talker, listener = Talker(), Listener()
    threading.Timer(0.05, talker.say, args=('from a thread',)).start()
    assert runtime.spin_until(lambda: listener.got, timeout_s=2.0)
    assert listener.got[0].data == 'from a thread'
    assert listener.threads == {threading.get_ident()}


def test_spin_wakes_immediately_for_work_from_another_thread(runtime):
    """The executor sleeps on a condition variable: work from another thread wakes it at once
    (a polling executor would need up to its 0.5 s maximum wait)."""
    talker, listener = Talker(), Listener()
    delays = []
    for _ in range(3):
        sent = []

        def later():
            time.sleep(0.05)
            sent.append(time.perf_counter())
            talker.say('x')

        threading.Thread(target=later).start()
        assert runtime.executor.spin_once(5.0)  # returns after running the callback
        delays.append(time.perf_counter() - sent[0])
    assert len(listener.got) == 3
    assert sorted(delays)[1] < 0.1


def test_keyboard_interrupt_and_errors_propagate_out_of_spin(runtime):
    node = Node('raiser')

    def interrupt_callback():
        raise KeyboardInterrupt

    timer = node.create_timer(0.001, interrupt_callback)
    with pytest.raises(KeyboardInterrupt):
        runtime.spin([node], duration_s=2.0)
    timer.cancel()

    other = Node('boom')

    def boom_callback():
        raise RuntimeError('boom')

    other.create_timer(0.001, boom_callback)
    with pytest.raises(RuntimeError, match='boom'):
        runtime.spin([other], duration_s=2.0)


def test_shutdown_from_another_thread_stops_spin(runtime):
    node = Node('idle')
    threading.Timer(0.1, runtime.shutdown).start()
    start = time.monotonic()
    runtime.spin([node])  # no duration: only shutdown ends it
    assert time.monotonic() - start < 2.0
    assert not runtime.ok()


# -- QoS ----------------------------------------------------------------------------------
def test_keep_last_depth_drops_oldest_and_counts(runtime):
    talker = Talker()
    listener = Listener(qos=3)
    for i in range(10):
        talker.say(str(i))
    runtime.spin([talker, listener], duration_s=0.05)
    assert [msg.data for msg in listener.got] == ['7', '8', '9']
    assert listener.sub.dropped == 7 and listener.sub.received == 10


def test_keep_all_keeps_everything(runtime):
    talker = Talker()
    listener = Listener(qos=QoS(depth=1, history='keep_all'))
    for i in range(50):
        talker.say(str(i))
    runtime.spin([talker, listener], duration_s=0.05)
    assert len(listener.got) == 50 and listener.sub.dropped == 0


def test_transient_local_replays_to_late_subscriber(runtime):
    latched = QoS(depth=2, durability='transient_local')
    talker = Talker(qos=latched)
    for i in range(3):
        talker.say(str(i))
    listener = Listener(qos=latched)
    volatile = Listener(name='volatile')
    runtime.spin([talker, listener, volatile], duration_s=0.05)
    assert [msg.data for msg in listener.got] == ['1', '2']
    assert volatile.got == []


def test_type_mismatch_is_not_delivered_and_publish_checks_type(runtime):
    talker = Talker()
    other = Node('int_listener')
    got = []
    other.create_subscription('std_msgs/msg/Int32', 'chatter', got.append, 10)
    talker.say('x')
    runtime.spin([talker, other], duration_s=0.02)
    assert got == []
    with pytest.raises(TypeError, match='std_msgs/msg/String'):
        talker.pub.publish(m.new('std_msgs/msg/Int32', data=1))


# -- intra-process ------------------------------------------------------------------------
def _image(width=64, height=48):
    data = np.arange(width * height * 3, dtype=np.uint8) % 251
    return m.new('sensor_msgs/msg/Image', height=height, width=width, encoding='rgb8',
                 step=width * 3, data=data)


def test_intra_process_passes_the_same_object_without_serialising(zenoh_runtime, monkeypatch):
    """Composition: no CDR at all, even with the Zenoh transport on."""
    from qail_ros.runtime import zenoh_transport

    def forbidden(*_args, **_kwargs):
        raise AssertionError('serialize() was called on the intra-process path')

    monkeypatch.setattr(m, 'serialize', forbidden)
    monkeypatch.setattr(m.typestore(), 'serialize_cdr', forbidden)
    monkeypatch.setattr(zenoh_transport, 'cdr_payload', forbidden)
    pub_node = Node('camera')
    pub = pub_node.create_publisher('sensor_msgs/msg/Image', 'image', SENSOR_DATA)
    sub_node = Node('policy')
    got = []
    sub_node.create_subscription('sensor_msgs/msg/Image', 'image', got.append, SENSOR_DATA)
    assert pub.remote is not None  # the transport is really on
    img = _image()
    for _ in range(5):
        pub.publish(img)
    zenoh_runtime.spin([pub_node, sub_node], duration_s=0.05)
    assert len(got) == 5 and all(g is img for g in got)
    assert pub.remote.serialized == 0


def test_in_process_only_runtime_has_no_transport(runtime):
    talker = Talker()
    assert talker.pub.remote is None and runtime.transport is None


# -- parameters ---------------------------------------------------------------------------
class Camera(Node):
    def __init__(self, **kwargs):
        super().__init__('camera_source', **kwargs)
        self.rate = self.declare_parameter('rate_hz', 10.0).value
        self.width = self.declare_parameter('size.width', 320).value
        self.source = self.declare_parameter('source', 'synthetic').value
        self.flip = self.declare_parameter('flip', False).value


def test_parameters_from_yaml_then_command_line(runtime, tmp_path):
    params = tmp_path / 'params.yaml'
    params.write_text('/**:\n  ros__parameters:\n    flip: true\n'
                      'camera_source:\n  ros__parameters:\n    rate_hz: 30\n'
                      '    size: {width: 640}\n    source: video.mp4\n'
                      'other_node:\n  ros__parameters:\n    rate_hz: 1.0\n')
    cam = Camera(cli_args=['--ros-args', '--params-file', str(params), '-p', 'source:=bag'])
    assert cam.rate == 30.0 and isinstance(cam.rate, float)
    assert cam.width == 640 and cam.flip is True and cam.source == 'bag'
    assert cam.get_parameter('rate_hz').value == 30.0
    cam.set_parameter('rate_hz', 5.0)
    assert cam.get_parameter('rate_hz').value == 5.0
    plain = Camera(cli_args=['--ros-args', '-r', '__node:=camera_source2'])
    assert plain.rate == 10.0 and plain.source == 'synthetic'


def test_namespaced_params_section_and_wrong_type(runtime, tmp_path):
    params = tmp_path / 'p.yaml'
    params.write_text('/robot/camera_source:\n  ros__parameters:\n    rate_hz: 15.0\n')
    cam = Camera(cli_args=['--ros-args', '-r', '__ns:=/robot', '--params-file', str(params)])
    assert cam.rate == 15.0 and cam.get_fully_qualified_name() == '/robot/camera_source'
    with pytest.raises(ParameterError, match='rate_hz'):
        Camera(cli_args=['--ros-args', '-r', '__node:=cam3', '-p', 'rate_hz:=fast'])


def test_global_args_from_init_apply_like_rclpy(runtime):
    runtime.init(['prog', '--ros-args', '-p', 'rate_hz:=99.0'])
    assert Camera().rate == 99.0


def test_nodes_main_rejects_undeclared_parameter(runtime, tmp_path, capsys):
    code = nodes_main([Camera], ['prog', '--ros-args', '-p', 'rate_hx:=3.0'], duration_s=0.01)
    assert code == 2
    assert "did you mean 'rate_hz'" in capsys.readouterr().err


# -- names --------------------------------------------------------------------------------
@pytest.mark.parametrize('name,ns,remaps,expected', [
    ('chatter', '/', {}, '/chatter'),
    ('chatter', '/robot', {}, '/robot/chatter'),
    ('/abs', '/robot', {}, '/abs'),
    ('~/status', '/robot', {}, '/robot/talker/status'),
    ('image', '/', {'image': '/camera/image_raw'}, '/camera/image_raw'),
    ('image', '/robot', {'image': 'cam/image'}, '/robot/cam/image'),
    ('/robot/image', '/robot', {'image': '/x'}, '/x'),
    ('image', '/', {'talker:image': '/mine'}, '/mine'),
    ('image', '/', {'other:image': '/theirs'}, '/image'),
])
def test_resolve_name(name, ns, remaps, expected):
    assert resolve_name(name, 'talker', ns, remaps) == expected


def test_node_name_namespace_and_topic_remaps(runtime):
    args = ['--ros-args', '-r', '__node:=cam', '-r', '__ns:=/robot',
            '-r', 'chatter:=/camera/chatter']
    talker = Talker(cli_args=args)
    assert talker.get_name() == 'cam' and talker.get_namespace() == '/robot'
    assert talker.pub.topic == '/camera/chatter'
    listener = Listener(topic='/camera/chatter')
    talker.say('remapped')
    runtime.spin([talker, listener], duration_s=0.02)
    assert [msg.data for msg in listener.got] == ['remapped']
    assert talker.pub.get_subscription_count() == 1
    assert listener.sub.get_publisher_count() == 1
    assert ('/camera/chatter', [STRING]) in runtime.topic_names_and_types()


# -- logging and clock --------------------------------------------------------------------
def test_logger_prints_ros_style_lines(runtime, capfd):
    node = Node('logger_node', namespace='/ns')
    node.get_logger().info('hello %d', 7)
    node.get_logger().warning('careful')
    node.get_logger().debug('hidden')
    err = capfd.readouterr().err
    assert re.search(r'^\[INFO\] \[\d+\.\d{9}\] \[ns\.logger_node\]: hello 7$', err, re.M)
    assert re.search(r'^\[WARN\] \[\d+\.\d{9}\] \[ns\.logger_node\]: careful$', err, re.M)
    assert 'hidden' not in err


def test_clock_is_system_time(runtime):
    node = Node('clock')
    before = time.time_ns()
    now = node.now_ns()
    assert before <= now <= time.time_ns()
    assert m.ns_from_time(node.now()) >= now


def test_destroyed_node_gets_no_more_messages(runtime):
    talker, listener = Talker(), Listener()
    listener.destroy_node()
    talker.say('late')
    runtime.spin([talker], duration_s=0.02)
    assert listener.got == [] and talker.pub.get_subscription_count() == 0


def test_fresh_runtime_after_shutdown_works(runtime):
    Talker()
    runtime.shutdown()
    assert not runtime.ok()
    runtime.init([])
    talker, listener = Talker(), Listener()
    talker.say('again')
    runtime.spin([talker, listener], duration_s=0.02)
    assert [msg.data for msg in listener.got] == ['again']


def test_bad_transport_choice_is_explained():
    from qail_ros.errors import TransportError
    with pytest.raises(TransportError, match='QAIL_ROS_TRANSPORT'):
        EmbeddedRuntime(transport='udp')


def test_log_level_argument_global_and_per_node(runtime, capfd):
    quiet = Node('quiet', cli_args=['--ros-args', '--log-level', 'error'])
    chatty = Node('chatty', cli_args=['--ros-args', '--log-level', 'chatty:=debug'])
    other = Node('other', cli_args=['--ros-args', '--log-level', 'chatty:=debug'])
    quiet.get_logger().warning('not shown')
    chatty.get_logger().debug('debug shown')
    other.get_logger().debug('other debug hidden')
    err = capfd.readouterr().err
    assert 'not shown' not in err and 'debug shown' in err and 'other debug' not in err
    with pytest.raises(ParameterError, match='--log-level'):
        Node('bad', cli_args=['--ros-args', '--log-level', 'loud'])


def test_unknown_message_type_and_bad_topic_are_explained(runtime):
    from qail_ros.errors import UnknownMessageTypeError
    node = Node('typo')
    with pytest.raises(UnknownMessageTypeError, match='sensor_msgs'):
        node.create_publisher('sensor_msgs/msg/Imag', 'image', 10)
    with pytest.raises(UnknownMessageTypeError):
        node.create_subscription('nope_msgs/msg/X', 'x', lambda _m: None, 10)
    with pytest.raises(ValueError, match='topic'):
        node.create_publisher(STRING, 'a//b', 10)


def test_a_busy_timer_does_not_starve_subscriptions(runtime):
    talker, listener = Talker(), Listener()
    busy = Node('busy')
    ticks = []

    def busy_callback():  # longer than its period: always due
        ticks.append(1)
        time.sleep(0.003)

    busy.create_timer(0.001, busy_callback)
    time.sleep(0.01)  # the timer is overdue before the first spin, and stays due
    for i in range(5):
        talker.say(str(i))
    assert runtime.spin_until(lambda: len(listener.got) == 5, timeout_s=2.0)
    assert ticks  # and the timer still ran
