"""The rclpy integration tier: qail_ros nodes on real rclpy, in an isolated ROS venv.

The ROS 2 Kilted wheels of requirements-ros.txt carry a `.pth` bootstrapper that re-executes
Python, so they live in their own venv (`.venv-ros`, or $QAIL_ROS_VENV), built or reused by
scripts/make_ros_venv.sh (keyed by a hash of requirements-ros.txt). Tests start nodes in
subprocesses of that venv with QAIL_ROS_RUNTIME=rclpy and qail_ros from this checkout on
PYTHONPATH; the test process itself (the main .venv) never imports rclpy.

DDS stays on this host: ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, a Fast DDS profile that
allows UDP on 127.0.0.1 only (fastdds_loopback.xml), and a random ROS_DOMAIN_ID per test so a
concurrent run on the same machine does not cross-talk.

Set QAIL_ROS_SKIP_RCLPY=1 to skip the tier; it skips by itself, with the reason, when the venv
cannot be built (no network, no CPython 3.10-3.13, not Linux x86_64).
"""
from __future__ import annotations

import json
import os
import platform
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
NODES = HERE / 'ros_nodes.py'
MAKE_VENV = ROOT / 'scripts' / 'make_ros_venv.sh'
BUILD_TIMEOUT_S = 900

#: Environment variables that could point DDS elsewhere than loopback; removed from children.
_SCRUB = ('ROS_LOCALHOST_ONLY', 'ROS_STATIC_PEERS', 'ROS_DISCOVERY_SERVER', 'ROS_SUPER_CLIENT',
          'FASTRTPS_DEFAULT_PROFILES_FILE', 'CYCLONEDDS_URI', 'ZENOH_ROUTER_CONFIG_URI',
          'ZENOH_SESSION_CONFIG_URI', '_ROS_WHEELS_BOOTSTRAP_COMPLETE', 'VIRTUAL_ENV',
          'PYTHONHOME')


def _base_python() -> str:
    explicit = os.environ.get('QAIL_ROS_VENV_PYTHON')
    if explicit:
        return explicit
    return getattr(sys, '_base_executable', None) or sys.executable


@pytest.fixture(scope='session')
def ros_python() -> str:
    """Path of the ROS venv's python; builds the venv on first use (skips if it cannot)."""
    if os.environ.get('QAIL_ROS_SKIP_RCLPY') == '1':
        pytest.skip('rclpy tier disabled by QAIL_ROS_SKIP_RCLPY=1')
    if sys.platform != 'linux' or platform.machine() != 'x86_64':
        pytest.skip(f'the ROS 2 wheels of requirements-ros.txt are built for Linux x86_64, '
                    f'not {sys.platform} {platform.machine()}')
    base = _base_python()
    version = subprocess.run([base, '-c', 'import sys; print(sys.version_info[:2])'],
                             capture_output=True, text=True).stdout.strip()
    if version not in ('(3, 10)', '(3, 11)', '(3, 12)', '(3, 13)'):
        pytest.skip(f'the ROS 2 wheels need CPython 3.10-3.13; {base} is {version}; set '
                    'QAIL_ROS_VENV_PYTHON to such an interpreter')
    venv = Path(os.environ.get('QAIL_ROS_VENV', ROOT / '.venv-ros'))
    start = time.monotonic()
    try:
        proc = subprocess.run(['bash', str(MAKE_VENV), str(venv)], capture_output=True,
                              text=True, timeout=BUILD_TIMEOUT_S,
                              env={**os.environ, 'PYTHON': base})
    except subprocess.TimeoutExpired:
        pytest.skip(f'building the ROS venv {venv} took over {BUILD_TIMEOUT_S} s (slow or no '
                    'network?); run scripts/make_ros_venv.sh by hand to see why')
    if proc.returncode != 0:
        tail = '\n'.join(line for line in (proc.stdout + proc.stderr).splitlines()
                         if 'WARNING: Location' not in line)[-1500:]
        pytest.skip(f'cannot build the ROS venv {venv} with scripts/make_ros_venv.sh (needs '
                    f'PyPI access for requirements-ros.txt): {tail}')
    sys.stderr.write(f'\n{proc.stdout.strip()} [{time.monotonic() - start:.1f} s]\n')
    return str(venv / 'bin' / 'python')


@pytest.fixture
def ros_env(tmp_path) -> dict[str, str]:
    """Environment of one test's ROS processes: rclpy runtime, Fast DDS on loopback only."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    env.update({
        'QAIL_ROS_RUNTIME': 'rclpy',
        'PYTHONPATH': str(ROOT),
        'PYTHONUNBUFFERED': '1',
        'PYTHONNOUSERSITE': '1',
        'RMW_IMPLEMENTATION': 'rmw_fastrtps_cpp',
        'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST',
        'FASTDDS_DEFAULT_PROFILES_FILE': str(HERE / 'fastdds_loopback.xml'),
        # 1..101: the ids whose ports stay below Linux's ephemeral range.
        'ROS_DOMAIN_ID': str(random.randint(1, 101)),
        'ROS_LOG_DIR': str(tmp_path / 'ros_log'),
        'RCUTILS_COLORIZED_OUTPUT': '0',
    })
    return env


class RosProcess:
    """A node process in its own process group; its stdout JSON lines are collected live."""

    def __init__(self, python: str, args: list[str], env: dict[str, str], cwd: Path,
                 name: str):
        self.name = name
        self.stderr_path = cwd / f'{name}.stderr'
        self._stderr = open(self.stderr_path, 'wb')
        self.proc = subprocess.Popen([python, *args], env=env, cwd=cwd, stdout=subprocess.PIPE,
                                     stderr=self._stderr, start_new_session=True)
        self.pgid = self.proc.pid
        self.events: list[dict[str, Any]] = []
        self.other_lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors='replace').strip()
            with self._cond:
                try:
                    self.events.append(json.loads(line))
                except json.JSONDecodeError:
                    self.other_lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def of(self, event: str) -> list[dict[str, Any]]:
        with self._cond:
            return [e for e in self.events if e.get('event') == event]

    def wait_for(self, predicate: Callable[['RosProcess'], bool], timeout: float,
                 what: str) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    break
                self._cond.wait(min(left, 0.2))
            if predicate(self):
                return
        raise AssertionError(f'{self.name}: {what} not seen within {timeout} s '
                             f'(exit code {self.proc.poll()}); {self.report()}')

    def wait_event(self, event: str, count: int = 1, timeout: float = 30.0) -> None:
        self.wait_for(lambda p: len(p.of(event)) >= count, timeout,
                      f"{count} '{event}' event(s)")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 10.0) -> tuple[int, float]:
        """Send `sig` to the process group (what Ctrl-C in a terminal does); exit code, time."""
        start = time.monotonic()
        if self.proc.poll() is None:
            os.killpg(self.pgid, sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f'{self.name} did not exit within {timeout} s of '
                                 f'{signal.Signals(sig).name}; {self.report()}') from None
        self._reader.join(5)
        return code, time.monotonic() - start

    def wait(self, timeout: float = 60.0) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def group_alive(self) -> bool:
        """Whether any process of this node's process group is still running."""
        try:
            os.killpg(self.pgid, 0)
        except ProcessLookupError:
            return False
        return True

    def kill(self) -> None:
        if self.proc.poll() is None or self.group_alive():
            try:
                os.killpg(self.pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)

    def stderr_text(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors='replace')

    def report(self) -> str:
        return (f'events={[e.get("event") for e in self.events]}, '
                f'stdout other={self.other_lines[-5:]}, '
                f'stderr tail={self.stderr_text()[-2000:]!r}')

    def close(self) -> None:
        self.kill()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


@pytest.fixture
def launch(ros_python, ros_env, tmp_path):
    """launch('talker', '--ros-args', ...) starts a test node (ros_nodes.py), launch('-m',
    'qail_ros.nodes.x', ...) a package node module; all are killed at teardown."""
    started: list[RosProcess] = []

    def start(role: str, *args: str, name: str | None = None, env: dict | None = None):
        argv = [role, *args] if role == '-m' else [str(NODES), role, *args]
        proc = RosProcess(ros_python, argv, env or ros_env, tmp_path,
                          name or (args[0].rsplit('.', 1)[-1] if role == '-m' else role))
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.close()
