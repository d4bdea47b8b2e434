"""`qail-ros launch orin_vla` end to end: real nodes, real processes, Zenoh between them.

The launcher is a child process of the test, as when a user runs it; Ctrl-C is SIGINT sent to
the launcher's pid. Every process of its tree (nodes, router) must be gone within 2 s.
"""
import importlib.util
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
QAIL_ROS = [sys.executable, '-c', 'import sys; from qail_ros.cli import main; sys.exit(main())']

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec('torch') is None,
                       reason='vla_policy needs torch'),
    pytest.mark.skipif(importlib.util.find_spec('qail_ros.nodes.camera_source') is None,
                       reason='the camera_source node is not written yet'),
]

ACTION_LINE = 'action dx='


class Launch:
    """A `qail-ros launch` child process whose output is read line by line in the background."""

    def __init__(self, *args: str, env: dict[str, str]):
        self.proc = subprocess.Popen(QAIL_ROS + ['launch', 'orin_vla', *args], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self._queue.put(line.rstrip('\n'))
        self._queue.put(None)

    def wait_for(self, text: str, count: int = 1, timeout_s: float = 90.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while sum(text in line for line in self.lines) < count:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return False
            if line is None:
                return False
            self.lines.append(line)
        return True

    def finish(self, timeout_s: float) -> str:
        try:
            self.proc.wait(timeout_s)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        while True:
            try:
                line = self._queue.get(timeout=2.0)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
        return '\n'.join(self.lines)


def running(procs):
    alive = []
    for p in procs:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.NoSuchProcess:
            pass
    return alive


@pytest.fixture
def env():
    from qail_ros.runtime import zenoh_transport as zt
    e = dict(os.environ)
    e['PYTHONPATH'] = os.pathsep.join(p for p in (str(ROOT), e.get('PYTHONPATH')) if p)
    e['QAIL_ROS_ZENOH_ROUTER'] = zt.free_endpoint()  # never meets another test run's router
    e['QAIL_ROS_RUNTIME'] = 'embedded'
    e.pop('QAIL_ROS_TRANSPORT', None)
    e.pop('ROS_DOMAIN_ID', None)
    return e


def test_demo_prints_actions_and_ctrl_c_stops_every_process_within_2s(env):
    launch = Launch('instruction:=open the drawer', env=env)
    try:
        assert launch.wait_for(ACTION_LINE, count=2), '\n'.join(launch.lines)
        me = psutil.Process(launch.proc.pid)
        tree = me.children(recursive=True)
        names = ' '.join(' '.join(p.cmdline()) for p in tree)
        assert 'qail_ros.nodes.camera_source' in names and 'qail_ros.nodes.vla_policy' in names
        assert 'qail_ros.cli router' in names  # the launcher started the router
        everything = [me] + tree
        start = time.monotonic()
        launch.proc.send_signal(signal.SIGINT)
        alive = everything
        while alive and time.monotonic() - start < 2.0:
            alive = running(everything)
            time.sleep(0.02)
        elapsed = time.monotonic() - start
    finally:
        out = launch.finish(10)
    assert not alive, f'still running {elapsed:.2f} s after SIGINT: {alive}\n{out}'
    assert launch.proc.returncode == 0, out
    action_lines = [line for line in out.splitlines() if ACTION_LINE in line]
    assert all(line.startswith('[vla_policy] ') for line in action_lines)
    assert 'latency' in action_lines[0] and 'ms' in action_lines[0]
    assert "instruction: 'open the drawer'" in out
    assert 'SIGINT received' in out
    assert 'SIGKILL' not in out, out  # the nodes stopped on SIGINT, nothing had to be killed


@pytest.mark.slow
def test_demo_with_duration_stops_by_itself(env):
    launch = Launch('--duration', '20', env=env)
    out = launch.finish(60)
    assert launch.proc.returncode == 0, out
    assert 'duration of 20 s reached' in out
    assert sum(ACTION_LINE in line for line in out.splitlines()) >= 2, out


def test_composed_runs_every_node_in_one_process(env):
    env = dict(env, QAIL_ROS_TRANSPORT='none')  # no Zenoh at all: only in-process passing
    launch = Launch('--composed', '--duration', '60', env=env)
    try:
        assert launch.wait_for(ACTION_LINE, count=2), '\n'.join(launch.lines)
        assert psutil.Process(launch.proc.pid).children(recursive=True) == []
        launch.proc.send_signal(signal.SIGINT)
    finally:
        out = launch.finish(10)
    assert launch.proc.returncode == 0, out
    assert 'composing camera_source, vla_policy, power_monitor in process' in out
