"""The secure profile (config/secure, scripts/make_secure_profile.sh): mutual TLS + access
control, on the embedded runtime's own Zenoh configuration path (ZENOH_*_CONFIG_URI).

A router runs the profile's router.json5; sessions use the per-identity NAME.json5 files. The
checks: a peer without a certificate of the profile's CA is refused; only the identity the ACL
names (vla_policy) can publish cmd_twist: messages from another identity never reach a
subscriber, and its publisher does not even appear on the graph.
"""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qail_ros import messages as m
from qail_ros.errors import TransportError
from qail_ros.runtime import zenoh_transport as zt

zenoh = pytest.importorskip('zenoh', reason='eclipse-zenoh is not installed')
pytestmark = pytest.mark.skipif(shutil.which('openssl') is None,
                                reason='openssl is needed to make the test certificates')

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / 'scripts' / 'make_secure_profile.sh'
IDENTITIES = ['vla_policy', 'camera_source', 'launcher', 'base_driver']


def make_profile(directory: Path, port: int, names=IDENTITIES) -> Path:
    subprocess.run(['bash', str(SCRIPT), str(directory), '--port', str(port), *names],
                   check=True, capture_output=True, text=True, timeout=60)
    return directory


@pytest.fixture(scope='module')
def profile(tmp_path_factory):
    """A profile and its router (a `qail-ros router` child)."""
    port = int(zt.free_endpoint().rsplit(':', 1)[1])
    directory = make_profile(tmp_path_factory.mktemp('secure'), port)
    env = dict(os.environ, ZENOH_ROUTER_CONFIG_URI=str(directory / 'router.json5'),
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get('PYTHONPATH'))
                                          if p))
    env.pop('QAIL_ROS_ZENOH_ROUTER', None)
    router = subprocess.Popen([sys.executable, '-m', 'qail_ros.cli',
                               'router'], env=env, stderr=subprocess.PIPE, text=True)
    endpoint = f'tls/localhost:{port}'
    deadline = time.monotonic() + 15
    while not zt.router_reachable(endpoint) and time.monotonic() < deadline:
        assert router.poll() is None, router.stderr.read()
        time.sleep(0.05)
    yield directory, endpoint
    router.terminate()
    router.wait(10)


@pytest.fixture
def identity(profile, monkeypatch):
    """identity('vla_policy') -> an EmbeddedRuntime whose Zenoh session has that certificate."""
    from qail_ros.runtime.embedded import EmbeddedRuntime
    directory, _endpoint = profile
    monkeypatch.delenv('QAIL_ROS_ZENOH_ROUTER', raising=False)
    monkeypatch.delenv('ROS_DOMAIN_ID', raising=False)
    made = []

    def make(name):
        monkeypatch.setenv('ZENOH_SESSION_CONFIG_URI', str(directory / f'{name}.json5'))
        rt = EmbeddedRuntime(transport='zenoh')
        rt.init([])
        assert rt.transport is not None and rt.transport.router_connected, name
        made.append(rt)
        return rt

    yield make
    for rt in made:
        rt.shutdown()


def _twist(x: float):
    msg = m.new('geometry_msgs/msg/TwistStamped')
    msg.twist.linear.x = x
    return msg


def _client_config(endpoint: str, **tls) -> 'zenoh.Config':
    conf = zenoh.Config()
    conf.insert_json5('mode', '"client"')
    conf.insert_json5('connect/endpoints', f'["{endpoint}"]')
    conf.insert_json5('transport/unicast/open_timeout', '2000')
    for key, value in tls.items():
        conf.insert_json5(f'transport/link/tls/{key}', value)
    return conf


def test_peer_without_the_certificate_cannot_connect(profile, tmp_path, monkeypatch):
    directory, endpoint = profile
    # No client certificate (it trusts the CA, so only mutual TLS can refuse it).
    with pytest.raises(Exception, match='Unable to connect'):
        zenoh.open(_client_config(endpoint, root_ca_certificate=f'"{directory}/ca.pem"'))
    # A certificate from another CA with an allowed name.
    other = make_profile(tmp_path / 'other', 1, ['vla_policy'])
    with pytest.raises(Exception, match='Unable to connect'):
        zenoh.open(_client_config(
            endpoint, root_ca_certificate=f'"{directory}/ca.pem"',
            connect_certificate=f'"{other}/vla_policy.pem"',
            connect_private_key=f'"{other}/vla_policy.key"', enable_mtls='true'))
    # Plain TCP to the TLS port: no Zenoh router answers; with the profile's identity, one does.
    monkeypatch.delenv('QAIL_ROS_ZENOH_ROUTER', raising=False)
    monkeypatch.delenv('ZENOH_SESSION_CONFIG_URI', raising=False)
    assert zt.probe_router(f'tcp/localhost:{endpoint.rsplit(":", 1)[1]}') is None
    monkeypatch.setenv('ZENOH_SESSION_CONFIG_URI', str(directory / 'launcher.json5'))
    assert zt.router_endpoint() == endpoint
    assert zt.probe_router() is not None
    # The embedded runtime with a session file it cannot use says which file.
    monkeypatch.setenv('ZENOH_SESSION_CONFIG_URI', str(other / 'vla_policy.json5'))
    monkeypatch.setenv('QAIL_ROS_ZENOH_ROUTER', endpoint)
    with pytest.raises(TransportError, match='ZENOH_SESSION_CONFIG_URI=.*vla_policy.json5'):
        zt.ZenohTransport(warn=False)


def test_only_the_policy_identity_can_publish_cmd_twist(identity):
    listener = identity('base_driver')       # the robot base: listens to cmd_twist
    policy = identity('vla_policy')
    intruder = identity('camera_source')     # a valid certificate, not allowed on cmd_twist
    got = []
    base = listener.create_node_handle('base')
    base.create_subscription('geometry_msgs/msg/TwistStamped', '/cmd_twist',
                             lambda msg: got.append(msg.twist.linear.x), _qos())
    pubs = {}
    for name, rt in (('policy', policy), ('intruder', intruder)):
        node = rt.create_node_handle(f'{name}_node')
        pubs[name] = node.create_publisher('geometry_msgs/msg/TwistStamped', '/cmd_twist',
                                           _qos())
    # The policy's publisher matches the subscriber; the intruder's is refused at the router,
    # token included: the base's graph shows exactly one remote publisher of cmd_twist.
    assert listener.spin_until(lambda: pubs['policy'].remote.matching, 30.0), \
        f'policy publisher never matched; graph: {listener.transport.graph()}'
    time.sleep(0.5)
    assert listener.count_publishers('/cmd_twist') == 1
    for i in range(20):
        pubs['intruder'].publish(_twist(-1.0))
        pubs['policy'].publish(_twist(float(i)))
        listener.spin_once(timeout_s=0.01)
    assert listener.spin_until(lambda: len(got) >= 20, 10.0), got
    listener.spin_until(lambda: False, 0.5)  # anything late from the intruder would show now
    assert got == [float(i) for i in range(20)]
    # Other topics stay open to the intruder's identity (the ACL names cmd_twist only).
    seen = []
    base.create_subscription('std_msgs/msg/String', '/instruction',
                             lambda msg: seen.append(msg.data), _qos())
    chat = intruder.create_node_handle('chat').create_publisher('std_msgs/msg/String',
                                                                '/instruction', _qos())
    assert intruder.spin_until(lambda: chat.remote.matching, 10.0)
    chat.publish(m.new('std_msgs/msg/String', data='hello'))
    assert listener.spin_until(lambda: seen == ['hello'], 10.0)


def _qos():
    from qail_ros.runtime import QoS
    return QoS(depth=50, reliability='reliable')


def test_session_and_router_config_files_are_read_as_rmw_zenoh_does(tmp_path, monkeypatch):
    monkeypatch.delenv('QAIL_ROS_ZENOH_ROUTER', raising=False)
    monkeypatch.delenv('ZENOH_CONFIG_OVERRIDE', raising=False)
    monkeypatch.delenv('ZENOH_SESSION_CONFIG_URI', raising=False)
    monkeypatch.delenv('ZENOH_ROUTER_CONFIG_URI', raising=False)
    # Unset: rmw_zenoh's defaults, the router on this host only.
    conf = zt.session_config()
    assert zt._endpoints(conf, 'connect') == ['tcp/127.0.0.1:7447']
    assert zt._endpoints(conf, 'listen') == ['tcp/127.0.0.1:0']
    assert conf.get_json('scouting/multicast/enabled') == 'false'
    assert zt.router_listen_endpoints() == ['tcp/127.0.0.1:7447']
    # A session file and an override on top.
    session = tmp_path / 'session.json5'
    session.write_text('{ mode: "client", connect: { endpoints: ["tcp/10.1.2.3:7500"] } }')
    monkeypatch.setenv('ZENOH_SESSION_CONFIG_URI', str(session))
    assert zt.router_endpoint() == 'tcp/10.1.2.3:7500'
    assert zt.session_config().get_json('mode') == '"client"'
    monkeypatch.setenv('ZENOH_CONFIG_OVERRIDE',
                       'connect/endpoints=["tcp/10.9.9.9:7000"];mode="peer"')
    assert zt.router_endpoint() == 'tcp/10.9.9.9:7000'
    assert zt.session_config().get_json('mode') == '"peer"'
    monkeypatch.setenv('ZENOH_CONFIG_OVERRIDE', 'nonsense')
    with pytest.raises(TransportError, match='not key=value'):
        zt.session_config()
    monkeypatch.delenv('ZENOH_CONFIG_OVERRIDE')
    router = tmp_path / 'router.json5'
    router.write_text('{ mode: "router", listen: { endpoints: ["tcp/127.0.0.1:7600"] } }')
    monkeypatch.setenv('ZENOH_ROUTER_CONFIG_URI', str(router))
    assert zt.router_listen_endpoints() == ['tcp/127.0.0.1:7600']
    assert zt.router_listen_endpoints('tcp/127.0.0.1:7601') == ['tcp/127.0.0.1:7601']
    monkeypatch.setenv('ZENOH_ROUTER_CONFIG_URI', str(tmp_path / 'missing.json5'))
    with pytest.raises(TransportError, match='ZENOH_ROUTER_CONFIG_URI=.*no such file'):
        zt.router_config()
    bad = tmp_path / 'bad.json5'
    bad.write_text('{ mode: "nonsense" }')
    monkeypatch.setenv('ZENOH_ROUTER_CONFIG_URI', str(bad))
    with pytest.raises(TransportError, match='not a valid Zenoh configuration'):
        zt.router_config()
