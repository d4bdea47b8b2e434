"""The process launcher with small stand-in node executables (fast, no ROS, no torch).

The stand-ins are plain Python modules written to tmp_path and added to the node registry for
the test; they print what they were started with, and can fail, ignore signals or leave a
grandchild behind, which is what the launcher's shutdown has to cope with.
"""
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from qail_ros.launching import launcher
from qail_ros.launching.description import load_launch_file
from qail_ros.nodes.registry import NODES

ROOT = Path(__file__).resolve().parents[2]

STUB = '''\
import json, os, signal, subprocess, sys, time
args = sys.argv[1:sys.argv.index('--ros-args')] if '--ros-args' in sys.argv else sys.argv[1:]
if 'ignore-signals' in args:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if 'grandchild' in args:
    subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])
print('READY', os.getpid(), json.dumps(sys.argv[1:]), flush=True)
try:
    if 'fail' in args:
        time.sleep(0.3)
        print('boom', flush=True)
        sys.exit(3)
    if 'quit' in args:
        sys.exit(0)
    while True:
        time.sleep(0.05)
except KeyboardInterrupt:
    print('stopping on SIGINT', flush=True)
'''

LAUNCH = '''\
from launch import LaunchDescription
from launch_ros.actions import Node

def generate_launch_description():
    return LaunchDescription([
{nodes}
    ])
'''


@pytest.fixture
def stubs(tmp_path, monkeypatch):
    """Registers executable 'stub' and returns a function writing a launch file of stubs."""
    pkg = tmp_path / 'qail_launch_stubs'
    pkg.mkdir()
    (pkg / '__init__.py').write_text('')
    (pkg / 'stub.py').write_text(STUB)
    monkeypatch.setitem(NODES, 'stub', 'qail_launch_stubs.stub:main')
    monkeypatch.setenv('PYTHONPATH', str(tmp_path))
    monkeypatch.setenv('QAIL_ROS_TRANSPORT', 'none')

    def make(**nodes: list[str]) -> Path:
        entries = '\n'.join(
            f"        Node(package='qail_ros', executable='stub', name={name!r}, "
            f"arguments={args!r}, parameters=[{{'value': 1}}], "
            f"remappings=[('in', '/{name}/in')])," for name, args in nodes.items())
        path = tmp_path / 'stubs.launch.py'
        path.write_text(LAUNCH.format(nodes=entries))
        return path
    return make


def run_launcher(path, duration_s):
    out = io.StringIO()
    start = time.monotonic()
    code = launcher.ProcessLauncher(load_launch_file(path), out=out,
                                    start_router=False).run(duration_s=duration_s)
    return code, out.getvalue(), time.monotonic() - start


def running(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Processes still running; a zombie (dead, waiting for init to reap it) is not."""
    out = []
    for p in procs:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def ready_pids(text: str) -> dict[str, int]:
    pids = {}
    for line in text.splitlines():
        label, _, rest = line.partition('] ')
        if rest.startswith('READY '):
            pids[label.lstrip('[')] = int(rest.split()[1])
    return pids


def test_children_get_their_arguments_and_output_is_prefixed(stubs):
    code, out, _ = run_launcher(stubs(alpha=['hello'], beta=[]), duration_s=1.5)
    assert code == 0, out
    lines = [line for line in out.splitlines() if 'READY' in line]
    assert {line.split(']')[0] for line in lines} == {'[alpha', '[beta'}
    argv = json.loads(next(line for line in lines if line.startswith('[alpha]')).split(' ', 3)[3])
    assert argv[0] == 'hello' and argv[1] == '--ros-args'
    assert argv[argv.index('__node:=alpha') - 1] == '-r'
    assert 'in:=/alpha/in' in argv and '--params-file' in argv
    assert '[alpha] stopping on SIGINT' in out and '[beta] stopping on SIGINT' in out
    assert 'duration of 1.5 s reached' in out


def test_a_failing_child_stops_the_others(stubs):
    code, out, elapsed = run_launcher(stubs(good=[], bad=['fail']), duration_s=20)
    assert code == 1, out
    assert '[bad] boom' in out and 'bad failed (exit code 3); stopping the other nodes' in out
    assert '[good] stopping on SIGINT' in out
    assert elapsed < 10
    for pid in ready_pids(out).values():
        assert not psutil.pid_exists(pid)


def test_a_child_that_finishes_cleanly_does_not_stop_the_others(stubs):
    code, out, _ = run_launcher(stubs(once=['quit'], keep=[]), duration_s=1.5)
    assert code == 0, out
    assert 'once finished (exit code 0)' in out
    assert '[keep] stopping on SIGINT' in out


def test_ctrl_c_stops_every_process_within_2s_even_stubborn_ones(stubs, tmp_path):
    """SIGINT to the launcher: SIGINT, then SIGTERM, then SIGKILL to each process group."""
    path = stubs(polite=[], stubborn=['ignore-signals', 'grandchild'])
    code = ('import sys; import qail_ros.nodes.registry as r; '
            "r.NODES['stub'] = 'qail_launch_stubs.stub:main'; "
            'from qail_ros.cli import main; sys.exit(main(sys.argv[1:]))')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(tmp_path)]))
    proc = subprocess.Popen([sys.executable, '-c', code, 'launch', str(path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        deadline = time.monotonic() + 30
        while len(ready_pids('\n'.join(lines))) < 2 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip('\n'))
        assert len(ready_pids('\n'.join(lines))) == 2, '\n'.join(lines)
        deadline = time.monotonic() + 10
        tree = []
        while time.monotonic() < deadline:  # the stubborn one's grandchild is there too
            tree = psutil.Process(proc.pid).children(recursive=True)
            if len(tree) >= 3:
                break
            time.sleep(0.05)
        assert len(tree) == 3, tree
        everything = [psutil.Process(proc.pid)] + tree
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        alive = everything
        while alive and time.monotonic() - start < 2.0:
            alive = running(everything)
            time.sleep(0.02)
        elapsed = time.monotonic() - start
        proc.wait(5)
        rest = proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not alive, (f'still running after {elapsed:.2f} s: {alive} (launcher {proc.pid}, '
                       f'tree {tree})\n{rest}')
    assert proc.returncode == 0, rest
    assert 'sending SIGTERM to stubborn' in rest and 'sending SIGKILL to stubborn' in rest
    assert '[polite] stopping on SIGINT' in rest
