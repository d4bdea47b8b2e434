"""A launch never runs on silently: a router port held by another program, a required node
that dies or stops on a fatal error (a full disk) each end `qail-ros launch` with a non-zero
exit code and a line naming the cause; `orin_vla` runs on the secure profile."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
QAIL_ROS = [sys.executable, '-c', 'import sys; from qail_ros.cli import main; sys.exit(main())']

pytest.importorskip('zenoh', reason='eclipse-zenoh is not installed')


@pytest.fixture
def env():
    from qail_ros.runtime import zenoh_transport as zt
    e = dict(os.environ)
    e['PYTHONPATH'] = os.pathsep.join(p for p in (str(ROOT), e.get('PYTHONPATH')) if p)
    e['QAIL_ROS_ZENOH_ROUTER'] = zt.free_endpoint()
    e['QAIL_ROS_RUNTIME'] = 'embedded'
    for name in ('QAIL_ROS_TRANSPORT', 'ROS_DOMAIN_ID', 'ZENOH_SESSION_CONFIG_URI',
                 'ZENOH_ROUTER_CONFIG_URI', 'ZENOH_CONFIG_OVERRIDE', 'QAIL_ROS_SECURE_PROFILE'):
        e.pop(name, None)
    return e


class Launch:
    """`qail-ros launch ...` in a child process; output collected in the background."""

    def __init__(self, *args: str, env: dict[str, str]):
        self.proc = subprocess.Popen(QAIL_ROS + ['launch', *args], env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip('\n'))

    def wait_for(self, text: str, count: int = 1, timeout_s: float = 90.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if sum(text in line for line in list(self.lines)) >= count:
                return True
            if self.proc.poll() is not None:
                time.sleep(0.3)
                return sum(text in line for line in list(self.lines)) >= count
            time.sleep(0.05)
        return False

    def finish(self, timeout_s: float) -> str:
        try:
            self.proc.wait(timeout_s)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        time.sleep(0.3)
        return '\n'.join(self.lines)

    def child(self, module: str) -> psutil.Process:
        for proc in psutil.Process(self.proc.pid).children(recursive=True):
            if module in ' '.join(proc.cmdline()):
                return proc
        raise AssertionError(f'no child runs {module}')


RECORD_LAUNCH = '''
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument('required_nodes', default_value='fp_recorder'),
        DeclareLaunchArgument('output_dir', default_value='recordings'),
        DeclareLaunchArgument('min_free_mb', default_value='1.0'),
        Node(package='qail_ros', executable='camera_source', name='camera_source',
             parameters=[{'width': 320, 'height': 240, 'rate_hz': 30.0,
                          'log_period_s': 0.0}]),
        Node(package='qail_ros', executable='fp_recorder', name='fp_recorder',
             parameters=[{'output_dir': LaunchConfiguration('output_dir'),
                          'min_free_mb': LaunchConfiguration('min_free_mb'),
                          'action_topics': ['action'], 'report_period_s': 0.0}]),
    ])
'''


@pytest.fixture
def record_launch(tmp_path):
    path = tmp_path / 'record_test.launch.py'
    path.write_text(RECORD_LAUNCH)
    return str(path)


def test_router_port_held_by_a_plain_tcp_listener_is_an_error_naming_it(env):
    with socket.socket() as holder:
        holder.bind(('127.0.0.1', 0))
        holder.listen(8)
        port = holder.getsockname()[1]
        env['QAIL_ROS_ZENOH_ROUTER'] = f'tcp/127.0.0.1:{port}'
        launch = Launch('orin_vla', '--duration', '30', env=env)
        out = launch.finish(60)
    assert launch.proc.returncode != 0, out
    assert f'port {port}' in out and 'does not answer as a Zenoh router' in out, out
    assert f'pid {os.getpid()}' in out, out        # the holder, read from /proc
    assert 'started camera_source' not in out      # no node ran against the wrong port


def test_killed_required_node_ends_the_launch_with_an_error(env, record_launch, tmp_path):
    launch = Launch(record_launch, f'output_dir:={tmp_path / "bags"}', '--duration', '60',
                    env=env)
    try:
        assert launch.wait_for('episode 0 started'), '\n'.join(launch.lines)
        assert any('required nodes (the launch stops if one exits): fp_recorder' in line
                   for line in launch.lines)
        launch.child('qail_ros.nodes.fp_recorder').send_signal(signal.SIGTERM)
    finally:
        out = launch.finish(30)
    assert launch.proc.returncode == 1, out
    assert 'required node fp_recorder exited (exit code 0) while the launch was running' in out


def test_non_required_node_exit_keeps_the_launch_running(env, record_launch, tmp_path):
    launch = Launch(record_launch, f'output_dir:={tmp_path / "bags"}', '--duration', '60',
                    env=env)
    try:
        assert launch.wait_for('episode 0 started'), '\n'.join(launch.lines)
        time.sleep(1.0)
        launch.child('qail_ros.nodes.camera_source').send_signal(signal.SIGTERM)
        assert launch.wait_for('camera_source finished (exit code 0)', timeout_s=20), \
            '\n'.join(launch.lines)
        time.sleep(1.0)
        assert launch.proc.poll() is None
        launch.proc.send_signal(signal.SIGINT)
    finally:
        out = launch.finish(30)
    assert launch.proc.returncode == 0, out


def test_disk_almost_full_ends_the_record_launch_with_an_error(env, record_launch,
                                                               small_filesystem):
    from rosbags.highlevel import AnyReader
    with small_filesystem(48) as disk:
        # 320x240 rgb8 at 30 Hz is ~7 MB/s: below 40 MB free within about a second.
        launch = Launch(record_launch, f'output_dir:={disk}', 'min_free_mb:=40.0',
                        '--duration', '60', env=env)
        out = launch.finish(60)
        assert launch.proc.returncode == 1, out
        assert 'recording stopped before the disk filled up' in out, out
        assert 'required node fp_recorder exited (exit code 2)' in out, out
        bags = sorted(p for p in disk.iterdir() if p.is_dir())
        with AnyReader(bags) as reader:             # closed, readable
            held = sum(1 for _ in reader.messages())
    said = [line for line in out.splitlines() if 'messages written' in line]
    assert said and f' {held} messages written' in said[-1], (held, said)


@pytest.mark.skipif(shutil.which('openssl') is None, reason='openssl makes the certificates')
def test_orin_vla_runs_on_the_secure_profile(env, tmp_path):
    pytest.importorskip('torch', reason='vla_policy needs torch')
    from qail_ros.runtime import zenoh_transport as zt
    port = zt.free_endpoint().rsplit(':', 1)[1]
    profile = tmp_path / 'secure'
    subprocess.run(['bash', str(ROOT / 'scripts' / 'make_secure_profile.sh'), str(profile),
                    '--port', port], check=True, capture_output=True, timeout=60)
    # QAIL_ROS_ZENOH_ROUTER stays set: the profile's files say where the router is, it wins.
    launch = Launch('orin_vla', '--secure', str(profile), '--duration', '120', env=env)
    try:
        assert launch.wait_for('action dx=', count=2), '\n'.join(launch.lines)
        launch.proc.send_signal(signal.SIGINT)
    finally:
        out = launch.finish(30)
    assert launch.proc.returncode == 0, out
    assert f'secure profile {profile}' in out and 'QAIL_ROS_ZENOH_ROUTER=tcp/' in out
    assert f'started a Zenoh router on tls/localhost:{port}' in out, out
    assert 'no Zenoh router' not in out and 'cannot open a Zenoh session' not in out
