"""A policy node in its own process publishes its safe command when it gets SIGTERM or SIGINT
(as from a launcher), before it exits with code 0: cilrs_policy's full brake, seen over Zenoh."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip('onnxruntime', reason='the shipped CILRS engine is onnxruntime')
pytest.importorskip('zenoh', reason='the node runs in another process: Zenoh between them')

from qail_ros import messages  # noqa: E402
from qail_ros.runtime import Node  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CONTROL = '/carla/ego_vehicle/vehicle_control_cmd'


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT])
def test_signal_gives_the_safe_command_before_exit(zenoh_runtime, zenoh_endpoint, sig):
    from qail_ros.msg_defs import register_carla_msgs
    from qail_ros.runtime import zenoh_transport as zt
    register_carla_msgs()
    router = zt.ensure_router(zenoh_endpoint)
    watcher = Node('watcher')
    controls, diags = [], []
    watcher.create_subscription('carla_msgs/msg/CarlaEgoVehicleControl', CONTROL,
                                controls.append, 100)
    watcher.create_subscription('diagnostic_msgs/msg/DiagnosticArray', '/diagnostics',
                                diags.append, 100)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT), os.environ.get('PYTHONPATH')) if p), QAIL_ROS_RUNTIME='embedded')
    env.pop('QAIL_ROS_TRANSPORT', None)
    proc = subprocess.Popen([sys.executable, '-m', 'qail_ros.nodes.cilrs_policy', '--ros-args',
                             '-p', 'input_timeout_s:=60.0'], env=env, cwd=str(ROOT),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # running: its diagnostics arrive (no frame, no timeout yet: no safe command so far)
        assert zenoh_runtime.spin_until(lambda: diags, 60.0), 'no /diagnostics from the node'
        zenoh_runtime.spin_until(lambda: False, 0.5)
        before = len(controls)
        proc.send_signal(sig)
        code = proc.wait(15)
        assert zenoh_runtime.spin_until(lambda: len(controls) > before, 5.0), proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if router is not None:
            router.stop()
    safe = controls[-1]
    assert messages.ns_from_time(safe.header.stamp) == 0
    assert (safe.throttle, safe.steer, safe.brake) == (0.0, 0.0, 1.0)
    assert code == 0
    assert 'safe command published at shutdown' in proc.stdout.read()
