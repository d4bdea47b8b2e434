"""RclpyRuntime's API in one process of the ROS venv (test/integration/runtime_checks.py).

Composition (two nodes with their own node-level --ros-args), parameters, QoS mapping, an
in-process publish -> subscribe round trip, the logger adapter, the clock, spin with a duration,
and the two ways spin ends early: an external rclpy.shutdown (returns) and KeyboardInterrupt
(propagates to nodes_main).
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.rclpy

CHECKS = Path(__file__).resolve().parent / 'runtime_checks.py'


def test_rclpy_runtime_api_in_process(ros_python, ros_env, tmp_path):
    env = dict(ros_env)
    env['RCUTILS_CONSOLE_OUTPUT_FORMAT'] = '[{severity}] [{name}] {function_name}: {message}'
    proc = subprocess.run([ros_python, str(CHECKS)], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out['runtime'] == 'RclpyRuntime'
    assert out['rest'] == ['prog', 'a', 'b']
    assert out['qos'] == {'sensor': [5, 'BEST_EFFORT', 'VOLATILE', 'KEEP_LAST'],
                          'keep_all': ['RELIABLE', 'TRANSIENT_LOCAL', 'KEEP_ALL'], 'int': 7}

    c = out['composed']
    assert c['names'] == ['/ns/renamed', '/b']          # node-level remaps, per node
    assert c['x'] == [5, 7]                             # node-level -p, per node
    assert c['f'] == [3.0, 'float', 'float']            # int given for a float parameter
    assert c['x_after_set'] == 11
    assert c['lst'] == [1, 2] and c['none'] is None
    assert c['resolved'] == ['/ns/image', '/remapped']
    assert c['received'] == ['in process'] and c['received_type'] == 'std_msgs/msg/String'
    assert c['subscription_count'] == 1
    assert 'sends std_msgs/msg/String, got std_msgs/msg/Header' in c['wrong_type']
    assert abs(c['now_minus_wall_s']) < 1.0             # ROS time = system time here
    assert 0.45 < c['spin_0_5_took_s'] < 1.5

    s = out['shutdown']
    assert s['external_shutdown_s'] < 2.0 and s['ok_after_external'] is False
    assert s['keyboard_interrupt'] == 'propagated' and s['ok_after_interrupt'] is True
    assert s['ok_after_shutdown'] is False

    # The logger adapter: %-args, warning -> WARN, the node's own function as the call site,
    # rclpy's `once` filter per call site, debug below the default level dropped.
    err = proc.stderr
    assert '[WARN] [ns.renamed] log_check: value 5 of x' in err
    assert err.count('once per site') == 1
    assert 'hidden debug' not in err
