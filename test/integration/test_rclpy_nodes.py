"""qail_ros nodes on real rclpy (ROS 2 Kilted wheels, Fast DDS), one process per node.

What is checked: the process really runs rclpy; images published by a qail_ros node reach a
qail_ros subscriber and a plain rclpy program, as CDR identical to qail_ros's own; messages built
by rclpy reach a qail_ros subscriber; parameters come from a ROS 2 YAML file and `--ros-args`
(with launch-style node/namespace remaps); a typo'd parameter or node section is qail_ros's
clear error; SIGINT / SIGTERM end a node cleanly with exit code 0 and nothing left running.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from qail_ros import messages

pytestmark = pytest.mark.rclpy

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ros_nodes  # noqa: E402  (the test nodes; imported here only for test_image)

REQUIREMENTS = Path(__file__).resolve().parents[2] / 'requirements-ros.txt'


def pinned_version(dist: str) -> str:
    """The version requirements-ros.txt pins for `dist`."""
    for line in REQUIREMENTS.read_text().splitlines():
        name, sep, version = line.strip().partition('==')
        if sep and name.lower() == dist.lower():
            return version
    raise KeyError(f'{dist} is not pinned in {REQUIREMENTS}')


def _assert_stopped_cleanly(proc, sig=signal.SIGINT, max_s: float = 5.0) -> None:
    code, took = proc.stop(sig)
    assert code == 0, f'{proc.name} exited with {code} after {sig!r}; {proc.report()}'
    assert took < max_s, f'{proc.name} took {took:.1f} s to stop'
    assert not proc.group_alive(), f'{proc.name} left processes running in its group'


def _assert_real_rclpy(proc) -> None:
    (runtime,) = proc.of('runtime')
    assert runtime['runtime_name'] == 'rclpy'
    assert runtime['runtime_class'] == 'RclpyRuntime'
    assert runtime['rclpy_loaded'] is True
    assert runtime['rclpy_version'] == pinned_version('ros-rclpy')
    assert runtime['rmw'] == 'rmw_fastrtps_cpp'


def test_images_flow_between_processes_as_ros2_cdr(launch):
    listener = launch('listener')
    probe = launch('probe')
    listener.wait_event('ready')
    probe.wait_event('ready')
    count = 5
    talker = launch('talker', '--ros-args', '-p', f'count:={count}', '-p',
                    'wait_for_subscribers:=2', '-p', 'frame_prefix:=img', '-p', 'rate_hz:=50.0')
    talker.wait_event('sent_all', timeout=30)
    listener.wait_event('image', count, timeout=15)
    probe.wait_event('raw_image', count, timeout=15)
    listener.wait_event('chatter', 1, timeout=15)

    for proc in (talker, listener):
        _assert_real_rclpy(proc)

    expected = [ros_nodes.test_image(i, 'img') for i in range(count)]
    # The qail_ros subscriber decodes exactly what the qail_ros publisher sent, in order.
    got = listener.of('image')
    assert [e['frame_id'] for e in got] == [f'img{i}' for i in range(count)]
    for event, msg in zip(got, expected):
        assert event['type'] == 'sensor_msgs/msg/Image'
        assert event['stamp_ns'] == messages.ns_from_time(msg.header.stamp)
        assert (event['width'], event['height'], event['encoding']) == (4, 3, 'rgb8')
        assert event['data'] == np.asarray(msg.data).tolist()

    # A plain rclpy program receives our CDR unchanged (DDS only pads the payload to 4 bytes)
    # and its generated Image class decodes it to the same fields.
    raws = probe.of('raw_image')
    assert [e['frame_id'] for e in raws] == [f'img{i}' for i in range(count)]
    for event, msg in zip(raws, expected):
        ours = messages.serialize(msg)
        wire = bytes.fromhex(event['hex'])
        assert wire[:len(ours)] == ours
        padding = wire[len(ours):]
        assert padding == bytes(len(padding)) and len(padding) < 4 and len(wire) % 4 == 0
        assert bytes.fromhex(event['native_hex']) == ours, 'rclpy serialises it differently'
        assert event['data'] == np.asarray(msg.data).tolist()
        assert (event['width'], event['encoding']) == (4, 'rgb8')

    # The default QoS is reliable / volatile, as DDS discovery shows it to another process.
    probe.wait_event('image_publisher', timeout=15)
    assert probe.of('image_publisher')[0] == {'event': 'image_publisher', 'node': 'talker',
                                              'reliability': 'RELIABLE',
                                              'durability': 'VOLATILE'}

    # Messages built by rclpy itself (std_msgs/String) decode in a qail_ros subscription.
    chatter = listener.of('chatter')
    assert all(e['data'].startswith('native ') for e in chatter)

    for proc in (talker, listener, probe):
        _assert_stopped_cleanly(proc)
    assert talker.of('deactivate')[0] == {'event': 'deactivate', 'sent': count,
                                          'context_ok': True}
    assert talker.of('cleanup')


def test_sensor_data_qos_reaches_dds(launch):
    """SENSOR_DATA (best effort) becomes the DDS QoS that other processes discover."""
    listener = launch('listener', '--ros-args', '-p', 'best_effort:=true')
    probe = launch('probe')  # a reliable reader: it must NOT match a best-effort writer
    listener.wait_event('ready')
    probe.wait_event('ready')
    talker = launch('talker', '--ros-args', '-p', 'best_effort:=true', '-p', 'count:=3',
                    '-p', 'wait_for_subscribers:=1')
    talker.wait_event('sent_all', timeout=30)
    listener.wait_event('image', 1, timeout=15)
    probe.wait_event('image_publisher', timeout=15)
    assert probe.of('image_publisher')[0] == {'event': 'image_publisher', 'node': 'talker',
                                              'reliability': 'BEST_EFFORT',
                                              'durability': 'VOLATILE'}
    assert not probe.of('raw_image'), 'a reliable reader matched a best-effort writer'
    for proc in (talker, listener, probe):
        _assert_stopped_cleanly(proc)


# rcl merges the sections that match a node in the order their keys first appear (in files and
# `-p`, which is the '/**' key), later ones winning; so the wildcard section comes last here and
# the `-p count:=8` below updates it. (A '/**' section *before* the node's own one would make the
# file's count win over `-p` on rclpy.)
PARAMS_YAML = '''\
/robot1/cam_talker:
  ros__parameters:
    rate_hz: 50          # an int for a float parameter: accepted as 50.0
    count: 7
    frame_prefix: yaml
    size: [2, 2]
/**:
  ros__parameters:
    best_effort: false
'''


def test_parameters_from_ros2_yaml_and_launch_style_arguments(launch, tmp_path):
    params = tmp_path / 'talker.yaml'
    params.write_text(PARAMS_YAML)
    # What `ros2 launch` passes a Node(name='cam_talker', namespace='robot1',
    # parameters=[file, {'count': 8}]): remaps, the file, then the override.
    talker = launch('talker', '--ros-args', '-r', '__node:=cam_talker', '-r', '__ns:=/robot1',
                    '--params-file', str(params), '-p', 'count:=8', '-p',
                    'wait_for_subscribers:=99')
    talker.wait_event('params', timeout=30)
    _assert_real_rclpy(talker)
    (got,) = talker.of('params')
    assert got == {'event': 'params', 'node': '/robot1/cam_talker', 'best_effort': False,
                   'count': 8, 'frame_prefix': 'yaml', 'quit_when_done': False,
                   'rate_hz': 50.0, 'size': [2, 2], 'wait_for_subscribers': 99}
    talker.wait_event('active')
    assert talker.of('active')[0]['topic'] == '/robot1/image'
    _assert_stopped_cleanly(talker)


@pytest.mark.parametrize('yaml_text, expected', [
    ('cam_talker:\n  ros__parameters:\n    rate_hzz: 5.0\n',
     ["'rate_hzz'", "did you mean 'rate_hz'"]),
    ('cam_talkr:\n  ros__parameters:\n    rate_hz: 5.0\n',
     ["'cam_talkr'", "did you mean 'cam_talker'"]),
    ('cam_talker:\n  ros__parameters:\n    count: seven\n',
     ["'count'", 'must be int']),
], ids=['parameter-typo', 'node-name-typo', 'wrong-type'])
def test_bad_parameter_file_is_a_clear_error(launch, tmp_path, yaml_text, expected):
    params = tmp_path / 'bad.yaml'
    params.write_text(yaml_text)
    talker = launch('talker', '--ros-args', '-r', '__node:=cam_talker', '--params-file',
                    str(params))
    code = talker.wait(timeout=60)
    err = talker.stderr_text()
    assert code == 2, f'exit code {code}; {talker.report()}'
    assert 'error: ' in err
    for fragment in expected:
        assert fragment in err, err[-2000:]
    assert not talker.of('active'), 'the node must not start with a bad parameter file'
    assert not talker.group_alive()


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM], ids=['SIGINT', 'SIGTERM'])
def test_signal_ends_node_cleanly(launch, sig):
    talker = launch('talker', '--ros-args', '-p', 'wait_for_subscribers:=0', '-p',
                    'count:=1000000', '-p', 'rate_hz:=100.0')
    talker.wait_for(lambda p: any('sent image 3 ' in line for line in [p.stderr_text()]),
                    timeout=30, what='a few images sent')
    _assert_stopped_cleanly(talker, sig, max_s=2.0)
    # Lifecycle hooks ran, with the ROS context still up (a node can still publish there).
    (deactivate,) = talker.of('deactivate')
    assert deactivate['context_ok'] is True and deactivate['sent'] >= 3
    assert talker.of('cleanup')


def test_node_can_end_its_own_process(launch):
    """Node.request_shutdown (a simulator bridge after its last episode) on rclpy: the spin
    returns, every lifecycle hook runs, the process exits 0 by itself."""
    talker = launch('talker', '--ros-args', '-p', 'wait_for_subscribers:=0', '-p', 'count:=5',
                    '-p', 'rate_hz:=50.0', '-p', 'quit_when_done:=true')
    code = talker.proc.wait(timeout=30)
    assert code == 0, talker.report()
    assert talker.of('sent_all') and talker.of('deactivate') and talker.of('cleanup')
    assert not talker.group_alive()


def test_package_camera_source_node_on_rclpy(launch):
    """The package's own camera_source node, as `ros2 run` would start it, on rclpy."""
    camera_source = pytest.importorskip('qail_ros.nodes.camera_source')
    listener = launch('listener')
    listener.wait_event('ready')
    camera = launch('-m', 'qail_ros.nodes.camera_source', '--ros-args', '-r',
                    'image_raw:=/image', '-r', '__node:=front_camera', '-p', 'width:=32', '-p',
                    'height:=24', '-p', 'rate_hz:=30.0', '-p', 'frame_id:=front')
    listener.wait_event('image', 3, timeout=30)
    scene = camera_source.SyntheticScene(32, 24, 'rgb8')
    sums = {int(scene.frame(k).sum(dtype=np.int64)) for k in range(scene.PERIOD_FRAMES)}
    for event in listener.of('image')[:3]:
        assert (event['width'], event['height'], event['encoding']) == (32, 24, 'rgb8')
        assert event['frame_id'] == 'front' and event['data_len'] == 32 * 24 * 3
        assert event['data_sum'] in sums, 'not a frame of the synthetic scene'
        # header.stamp is the camera node's ROS clock: within seconds of the listener's clock.
        assert 0 <= event['now_ns'] - event['stamp_ns'] < 5e9
    assert 'front_camera' in camera.stderr_text(), 'the __node remap did not reach rcl'
    for proc in (camera, listener):
        _assert_stopped_cleanly(proc)


_IN_ROS_VENV = textwrap.dedent('''
    import importlib.util, json, pkgutil, sys
    import qail_ros, qail_ros.messages, qail_ros.runtime
    import qail_ros.nodes
    skipped = {}  # this venv lacks what some nodes need (torch, PIL): that is not our check
    for info in pkgutil.iter_modules(qail_ros.nodes.__path__, 'qail_ros.nodes.'):
        try:
            __import__(info.name)
        except ImportError as exc:
            skipped[info.name] = str(exc)
    lean = 'rclpy' not in sys.modules
    out = {'lean': lean, 'rclpy_importable': importlib.util.find_spec('rclpy') is not None,
           'skipped': skipped}
    from qail_ros.errors import UnknownMessageTypeError
    from qail_ros.runtime import Node, get_runtime, runtime_name
    out['auto_choice'] = runtime_name()
    node = Node('checker')
    out['runtime'] = type(get_runtime()).__name__
    for msgtype in ('nav_msgs/msg/Odometry', 'foo_msgs/msg/Bar'):
        try:
            node.create_publisher(msgtype, 'x')
            out[msgtype] = None
        except UnknownMessageTypeError as exc:
            out[msgtype] = str(exc)
    node.destroy_node()
    get_runtime().shutdown()
    print(json.dumps(out))
''')


def test_auto_mode_picks_rclpy_lazily_and_missing_types_are_explained(
        ros_python, ros_env, tmp_path):
    env = dict(ros_env)
    env.pop('QAIL_ROS_RUNTIME')  # auto: rclpy is importable here, so it must be chosen
    proc = subprocess.run([ros_python, '-c', _IN_ROS_VENV], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out['rclpy_importable'] and out['lean'], out
    assert out['auto_choice'] == 'rclpy' and out['runtime'] == 'RclpyRuntime'
    # Known to qail_ros, but the ROS venv has no nav_msgs: name the package to install.
    assert "ROS interface package 'nav_msgs'" in out['nav_msgs/msg/Odometry']
    assert 'ros-nav-msgs' in out['nav_msgs/msg/Odometry']
    # Unknown everywhere: qail_ros's own message, naming register_msgdefs.
    assert 'register_msgdefs' in out['foo_msgs/msg/Bar']


def test_policy_failsafe_diagnostics_and_parameters_on_rclpy(launch):
    """The policy-node base on rclpy: a frame of an unknown encoding gives the safe command at
    once and /diagnostics ERROR with its counter, valid frames bring normal actions back,
    `max_rate_hz` set over the parameter service slows the node, `precision` (read-only) is
    refused with the reason, and a camera that stops trips the watchdog in time."""
    timeout_s = 0.5
    policy = launch('policy', '--ros-args', '-p', f'input_timeout_s:={timeout_s}',
                    '-p', 'diagnostics_period_s:=0.2', '-p', 'log_period_s:=0.0')
    policy.wait_event('runtime', timeout=30)
    _assert_real_rclpy(policy)
    probe = launch('policy_probe')
    probe.wait_event('done', timeout=90)
    events = {name: probe.of(name)[0] for name in (
        'normal', 'safe', 'diag_error', 'recovered', 'set_rate', 'rate', 'set_precision',
        'set_bad_rate', 'timeout') if probe.of(name)}
    report = probe.report()
    assert events['normal']['ok'], report
    assert events['safe']['ok'] and events['safe']['ms'] <= (timeout_s * 1.25) * 1e3, report
    assert events['diag_error']['ok'], report
    assert events['recovered']['ok'], report
    assert events['set_rate']['successful'], report
    rate = events['rate']
    assert rate['after'] <= 2.0 * 1.5 + 1 < rate['before'], report
    assert not events['set_precision']['successful']
    assert 'read-only' in events['set_precision']['reason'], events['set_precision']
    assert not events['set_bad_rate']['successful']
    assert 'max_rate_hz must be >= 0' in events['set_bad_rate']['reason']
    assert events['timeout']['ok'], report
    assert events['timeout']['ms'] <= (timeout_s * 1.25) * 1e3 + 300, report   # + DDS latency
    assert [e['name'] for e in policy.of('param_change')] == ['max_rate_hz']
    _assert_stopped_cleanly(policy)
