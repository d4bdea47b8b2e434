"""The Zenoh transport: rmw_zenoh wire layout, router helpers, two processes talking.

Expected values are derived by hand from rmw_zenoh's sources (ros2/rmw_zenoh,
rmw_zenoh_cpp/src/detail/liveliness_utils.cpp, attachment_helpers.cpp, qos.cpp) and
zenoh-cpp's ext::Serializer (std::array -> LEB128 length + elements).
"""
import logging
import os
import signal
import struct
import subprocess
import sys
import time

import pytest

from qail_ros import messages as m
from qail_ros.runtime import SENSOR_DATA, Node, QoS
from qail_ros.runtime import zenoh_transport as zt

pytest.importorskip('zenoh', reason='eclipse-zenoh is not installed')

STRING_HASH = 'RIHS01_df668c740482bbd48fb39d76a70dfd4bd59db1288021743503259e948f6b1a18'
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ECHO = os.path.join(ROOT, 'test', 'runtime', 'echo_node.py')


# -- wire layout --------------------------------------------------------------------------
def test_type_names_and_topic_keyexpr():
    assert zt.ros_type_name('sensor_msgs/msg/Image') == 'sensor_msgs::msg::dds_::Image_'
    assert zt.ros_type_name('std_msgs/String') == 'std_msgs::msg::dds_::String_'
    assert zt.msgtype_from_ros_type_name('sensor_msgs::msg::dds_::Image_') == \
        'sensor_msgs/msg/Image'
    assert m.type_hash('std_msgs/msg/String') == STRING_HASH  # the hash ROS 2 Jazzy prints
    assert zt.topic_keyexpr(0, '/chatter', 'std_msgs/msg/String') == \
        f'0/chatter/std_msgs::msg::dds_::String_/{STRING_HASH}'
    assert zt.topic_keyexpr(7, '/robot/camera/image_raw', 'sensor_msgs/msg/Image') \
        .startswith('7/robot/camera/image_raw/sensor_msgs::msg::dds_::Image_/RIHS01_')


@pytest.mark.parametrize('qos,expected', [
    (QoS(), '::,10:,:,:,,'),                             # rclpy default: depth 10, rest default
    (QoS(depth=42), '::,:,:,:,,'),                       # all of rmw_zenoh's defaults
    (SENSOR_DATA, '2::,5:,:,:,,'),                       # best effort = 2
    (QoS(depth=1, durability='transient_local'), ':1:,1:,:,:,,'),
    (QoS(depth=3, history='keep_all'), '::2,3:,:,:,,'),
])
def test_qos_keyexpr(qos, expected):
    assert zt.qos_to_keyexpr(qos) == expected


def test_liveliness_keyexprs_and_parsing():
    zid = '1234abcd'
    node = zt.liveliness_keyexpr(0, zid, 3, 3, 'NN', '/', 'talker')
    assert node == '@ros2_lv/0/1234abcd/3/3/NN/%/%/talker'
    pub = zt.liveliness_keyexpr(0, zid, 3, 4, 'MP', '/robot', 'talker', topic='/robot/chatter',
                                msgtype='std_msgs/msg/String', qos=QoS())
    assert pub == ('@ros2_lv/0/1234abcd/3/4/MP/%/%robot/talker/%robot%chatter/'
                   f'std_msgs::msg::dds_::String_/{STRING_HASH}/::,10:,:,:,,')
    entity = zt.parse_liveliness_keyexpr(pub)
    assert (entity.kind, entity.zid, entity.namespace, entity.node, entity.topic,
            entity.msgtype, entity.type_hash) == ('MP', zid, '/robot', 'talker',
                                                  '/robot/chatter', 'std_msgs/msg/String',
                                                  STRING_HASH)
    assert zt.parse_liveliness_keyexpr(node).node == 'talker'
    assert zt.parse_liveliness_keyexpr('@ros2_lv/0/x') is None
    assert zt.parse_liveliness_keyexpr('something/else/entirely/a/b/c/d/e/f') is None


def test_gid_is_xxh3_128_low_then_high_little_endian():
    # XXH3-128 of b'' is 0x99aa06d3014798d86001c324468d497f (high64 | low64).
    assert zt.gid_from_keyexpr('') == bytes.fromhex('7f498d4624c30160' 'd8984701d306aa99')
    assert len(zt.gid_from_keyexpr('@ros2_lv/0/a/0/0/NN/%/%/n')) == 16


def test_attachment_is_33_bytes_like_rmw_zenoh():
    gid = bytes(range(16))
    att = zt.encode_attachment(1, 1_700_000_000_123_456_789, gid)
    assert len(att) == 33
    assert att[:8] == struct.pack('<q', 1)
    assert att[8:16] == struct.pack('<q', 1_700_000_000_123_456_789)
    assert att[16] == 16 and att[17:] == gid     # std::array: LEB128 length, then the bytes
    assert zt.decode_attachment(att) == (1, 1_700_000_000_123_456_789, gid)
    with pytest.raises(ValueError):
        zt.decode_attachment(att[:-1])
    with pytest.raises(ValueError):
        zt.encode_attachment(1, 2, b'short')


def test_attachment_matches_zenoh_ext_serializer():
    """zenoh-python's z_serialize is the Rust twin of zenoh-cpp's ext::Serializer."""
    from zenoh.ext import Int64, UInt8, z_serialize
    gid = bytes(range(100, 116))
    ref = z_serialize((Int64(5), Int64(123456789), [UInt8(b) for b in gid])).to_bytes()
    assert zt.encode_attachment(5, 123456789, gid) == ref


def test_endpoints_and_domain(monkeypatch):
    monkeypatch.delenv('QAIL_ROS_ZENOH_ROUTER', raising=False)
    monkeypatch.delenv('ROS_DOMAIN_ID', raising=False)
    assert zt.router_endpoint() == 'tcp/127.0.0.1:7447' and zt.domain_id() == 0
    monkeypatch.setenv('QAIL_ROS_ZENOH_ROUTER', 'tcp/10.0.0.2:7000')
    monkeypatch.setenv('ROS_DOMAIN_ID', '12')
    assert zt.router_endpoint() == 'tcp/10.0.0.2:7000' and zt.domain_id() == 12
    monkeypatch.setenv('ROS_DOMAIN_ID', 'x')
    with pytest.raises(zt.TransportError, match='ROS_DOMAIN_ID'):
        zt.domain_id()
    with pytest.raises(zt.TransportError, match='tcp/HOST:PORT'):
        zt.router_reachable('localhost')
    assert zt.free_endpoint().startswith('tcp/127.0.0.1:')


# -- router -------------------------------------------------------------------------------
def test_ensure_router_starts_one_and_reuses_it(zenoh_endpoint):
    assert not zt.router_reachable(zenoh_endpoint)
    handle = zt.ensure_router(zenoh_endpoint)
    try:
        assert handle is not None and handle.alive()
        assert zt.router_reachable(zenoh_endpoint)
        assert zt.ensure_router(zenoh_endpoint) is None  # already there: nothing started
    finally:
        handle.stop()
    assert not handle.alive() and handle.process.returncode == 0
    assert not zt.router_reachable(zenoh_endpoint)


def test_no_router_warns_with_the_fix_and_works_in_process(zenoh_runtime, caplog):
    with caplog.at_level(logging.WARNING, logger='qail_ros.runtime.zenoh'):
        node = Node('alone')
    assert 'qail-ros router' in caplog.text and 'QAIL_ROS_ZENOH_ROUTER' in caplog.text
    got = []
    node.create_subscription('std_msgs/msg/String', 'x', got.append, 10)
    pub = node.create_publisher('std_msgs/msg/String', 'x', 10)
    pub.publish(m.new('std_msgs/msg/String', data='local'))
    zenoh_runtime.spin([node], duration_s=0.02)
    assert [g.data for g in got] == ['local']


# -- two processes ------------------------------------------------------------------------
def _child_env():
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(p for p in (ROOT, env.get('PYTHONPATH')) if p)
    env['QAIL_ROS_RUNTIME'] = 'embedded'
    env.pop('QAIL_ROS_TRANSPORT', None)
    return env


def test_two_processes_talk_over_zenoh_with_rmw_zenoh_layout(zenoh_endpoint, zenoh_runtime):
    router = zt.ensure_router(zenoh_endpoint)
    child = subprocess.Popen([sys.executable, ECHO, '20', '--ros-args', '-r', '__ns:=/robot'],
                             env=_child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        node = Node('tester', namespace='/robot')
        got = []
        node.create_subscription('std_msgs/msg/String', 'pong', got.append, 10)
        ping = node.create_publisher('std_msgs/msg/String', 'ping', 10)
        transport = zenoh_runtime.transport
        raw = []
        pong_key = zt.topic_keyexpr(0, '/robot/pong', 'std_msgs/msg/String')
        raw_sub = transport.session.declare_subscriber(
            pong_key, lambda s: raw.append((bytes(s.payload.to_bytes()),
                                            s.attachment.to_bytes())))
        # The child appears on the liveliness graph, then matches our publisher.
        assert zenoh_runtime.spin_until(
            lambda: ping.get_subscription_count() == 1 and ping.remote.matching, 15.0), \
            child.stderr.read() if child.poll() is not None else 'echo node never matched'
        assert node.create_subscription  # node alive
        for i in range(5):
            ping.publish(m.new('std_msgs/msg/String', data=str(i)))
        assert zenoh_runtime.spin_until(lambda: len(got) == 5, 10.0)
        assert [g.data for g in got] == [f'echo:{i}' for i in range(5)]
        assert ping.remote.serialized == 5
        # On the wire: CDR payload, 33-byte attachment, sequence numbers from 1, GID of the
        # child's publisher token.
        deadline = time.monotonic() + 5
        while len(raw) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        raw_sub.undeclare()
        assert m.deserialize(raw[0][0], 'std_msgs/msg/String').data == 'echo:0'
        decoded = [zt.decode_attachment(att) for _payload, att in raw]
        assert [d[0] for d in decoded] == [1, 2, 3, 4, 5]
        assert all(abs(d[1] - time.time_ns()) < 60e9 for d in decoded)
        pub_tokens = [key for key, e in transport._graph.items()
                      if e.kind == 'MP' and e.topic == '/robot/pong' and e.zid != transport.zid]
        assert len(pub_tokens) == 1 and decoded[0][2] == zt.gid_from_keyexpr(pub_tokens[0])
        nodes = {(e.namespace, e.node) for e in transport.graph() if e.kind == 'NN'}
        assert {('/robot', 'echo'), ('/robot', 'tester')} <= nodes
        # Clean shutdown of the child on SIGINT, and its tokens leave the graph.
        child.send_signal(signal.SIGINT)
        assert child.wait(5) == 0
        assert zenoh_runtime.spin_until(lambda: ping.get_subscription_count() == 0, 10.0)
        assert zenoh_runtime.spin_until(lambda: not ping.remote.matching, 5.0)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        router.stop()


def test_cdr_payload_is_byte_identical_to_messages_serialize():
    img = m.new('sensor_msgs/msg/Image', height=2, width=3, encoding='rgb8', step=9,
                data=__import__('numpy').arange(18, dtype='uint8'))
    assert bytes(zt.cdr_payload(img)) == m.serialize(img)
    msg = m.new('std_msgs/msg/String', data='hé')
    assert bytes(zt.cdr_payload(msg)) == m.serialize(msg)


def test_transient_local_reaches_a_late_session_once(zenoh_endpoint):
    """Two sessions (two runtimes in this process): the late one gets the publisher's cache
    (Zenoh advanced pub/sub, as rmw_zenoh), the early one's local late subscriber gets the
    in-process replay and no duplicate through Zenoh."""
    from qail_ros.runtime.embedded import EmbeddedRuntime
    router = zt.ensure_router(zenoh_endpoint)
    first, second = EmbeddedRuntime('zenoh'), EmbeddedRuntime('zenoh')
    latched = QoS(depth=2, durability='transient_local')
    try:
        first.init([])
        second.init([])
        talker = Node('latcher', runtime=first)
        pub = talker.create_publisher('std_msgs/msg/String', 'latched', latched)
        for i in range(3):
            pub.publish(m.new('std_msgs/msg/String', data=str(i)))
        local = []
        talker.create_subscription('std_msgs/msg/String', 'latched', local.append, latched)
        late = Node('late', runtime=second)
        remote = []
        late.create_subscription('std_msgs/msg/String', 'latched', remote.append, latched)
        assert second.spin_until(lambda: len(remote) >= 2, 10.0)
        first.spin(duration_s=0.3)
        second.spin(duration_s=0.2)
        assert [x.data for x in remote] == ['1', '2']
        assert [x.data for x in local] == ['1', '2']
    finally:
        first.shutdown()
        second.shutdown()
        router.stop()


def test_router_of_a_killed_parent_does_not_outlive_it(zenoh_endpoint):
    code = ('import sys, time; from qail_ros.runtime import zenoh_transport as zt; '
            f'h = zt.ensure_router({zenoh_endpoint!r}); print(h.pid, flush=True); '
            'time.sleep(60)')
    parent = subprocess.Popen([sys.executable, '-c', code], env=_child_env(),
                              stdout=subprocess.PIPE, text=True)
    try:
        router_pid = int(parent.stdout.readline())
        assert zt.router_reachable(zenoh_endpoint)
        parent.kill()  # SIGKILL: no chance to stop its router
        parent.wait()
        deadline = time.monotonic() + 5
        while zt.router_reachable(zenoh_endpoint) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not zt.router_reachable(zenoh_endpoint)
        while time.monotonic() < deadline:
            try:
                os.kill(router_pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        with pytest.raises(ProcessLookupError):
            os.kill(router_pid, 0)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


@pytest.mark.parametrize('shm_mb', ['64', '0'])
def test_large_messages_cross_sessions_intact_with_and_without_shared_memory(
        zenoh_endpoint, monkeypatch, shm_mb):
    import numpy as np

    from qail_ros.runtime.embedded import EmbeddedRuntime
    monkeypatch.setenv('QAIL_ROS_ZENOH_SHM_MB', shm_mb)
    router = zt.ensure_router(zenoh_endpoint)
    first, second = EmbeddedRuntime('zenoh'), EmbeddedRuntime('zenoh')
    try:
        first.init([])
        second.init([])
        # keep_all + reliable: Zenoh blocks instead of dropping when its queue is full
        # (rmw_zenoh's mapping; keep_last may drop 230 kB messages sent back to back on a
        # loaded machine, by design), so all three must arrive
        qos = QoS(history='keep_all')
        pub = Node('cam', runtime=first).create_publisher('sensor_msgs/msg/Image', 'img', qos)
        got = []
        Node('sink', runtime=second).create_subscription('sensor_msgs/msg/Image', 'img',
                                                         got.append, qos)
        assert first.spin_until(lambda: pub.remote.matching, 10.0)
        # Discovery is asynchronous on both sides (as in ROS 2): the publisher may see the
        # match before the whole route exists. Warm up until a small message gets through.
        warm = m.new('sensor_msgs/msg/Image', encoding='warm-up')
        for _ in range(100):
            pub.publish(warm)
            if second.spin_until(lambda: got, 0.1):
                break
        assert got, 'no message crossed the sessions after matching'
        shm_before = pub.remote.shm_sent
        pixels = (np.arange(320 * 240 * 3) % 253).astype(np.uint8)  # 230 kB > SHM_MIN_BYTES
        for i in range(3):
            pub.publish(m.new('sensor_msgs/msg/Image', height=240, width=320, encoding='rgb8',
                              step=960, data=pixels, is_bigendian=i))

        def images():  # late warm-up messages aside
            return [g for g in got if g.encoding == 'rgb8']
        assert second.spin_until(lambda: len(images()) == 3, 20.0)
        assert [g.is_bigendian for g in images()] == [0, 1, 2]
        assert all(np.array_equal(g.data, pixels) for g in images())
        assert pub.remote.shm_sent - shm_before == (3 if shm_mb != '0' else 0)
    finally:
        first.shutdown()
        second.shutdown()
        router.stop()


def test_domains_are_isolated(zenoh_endpoint, monkeypatch):
    from qail_ros.runtime.embedded import EmbeddedRuntime
    router = zt.ensure_router(zenoh_endpoint)
    runtimes = []
    try:
        got = {}
        pubs = {}
        for domain in ('3', '4'):
            monkeypatch.setenv('ROS_DOMAIN_ID', domain)
            talker_rt, listener_rt = EmbeddedRuntime('zenoh'), EmbeddedRuntime('zenoh')
            runtimes += [talker_rt, listener_rt]
            pubs[domain] = Node('t', runtime=talker_rt).create_publisher(
                'std_msgs/msg/String', 'chatter', 10)
            got[domain] = []
            Node('l', runtime=listener_rt).create_subscription(
                'std_msgs/msg/String', 'chatter', got[domain].append, 10)
            assert pubs[domain].remote.keyexpr.startswith(domain + '/chatter/')
        for i, (domain, pub) in enumerate(pubs.items()):
            assert runtimes[0].spin_until(lambda: pub.remote.matching, 10.0)
            # Discovery settles asynchronously after matching: publish until one gets through.
            for _ in range(100):
                pub.publish(m.new('std_msgs/msg/String', data=domain))
                if runtimes[2 * i + 1].spin_until(lambda: got[domain], 0.1):
                    break
            assert got[domain], f'nothing reached the listener of domain {domain}'
        for rt in runtimes:
            rt.spin(duration_s=0.1)
        assert {x.data for x in got['3']} == {'3'} and {x.data for x in got['4']} == {'4'}
    finally:
        for rt in runtimes:
            rt.shutdown()
        router.stop()


def test_process_that_forgets_shutdown_still_exits(zenoh_endpoint):
    """zenoh-python's default callback threads are non-daemon: without the direct handlers a
    script that never calls runtime.shutdown() would hang at exit."""
    code = ('from qail_ros.runtime import Node\n'
            "n = Node('forgetful')\n"
            "n.create_subscription('std_msgs/msg/String', 'a', print, 10)\n"
            "n.create_publisher('std_msgs/msg/String', 'a', 10)\n"
            "n.create_subscription('std_msgs/msg/String', 'b', print,\n"
            "                      __import__('qail_ros.runtime').runtime.QoS(\n"
            "                          durability='transient_local'))\n"
            "print('made', flush=True)\n")
    proc = subprocess.run([sys.executable, '-c', code], env=_child_env(), capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0 and 'made' in proc.stdout, proc.stderr
