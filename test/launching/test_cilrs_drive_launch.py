"""launch/cilrs_drive.launch.py: the shipped trained engine at its camera size, the launch ends
after `episodes`, and (end to end, composed, one empty-highway route) it actually drives."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qail_ros.launching.description import find_launch_file, load_launch_file

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_are_the_shipped_engine_and_its_camera():
    spec = load_launch_file(find_launch_file('cilrs_drive'), ['episodes:=3'])
    bridge, policy = spec.node('env_bridge'), spec.node('cilrs_policy')
    assert bridge.shutdown_on_exit and not policy.shutdown_on_exit
    params = bridge.parameters[0]
    assert (params['image_width'], params['image_height'], params['view_m']) == (160, 72, 50.0)
    assert params['episodes'] == 3 and params['shutdown_when_done'] is True
    engine = policy.parameters[-1]['engine']
    assert engine == 'models/cilrs-highway/cilrs_highway_w8a8_ort.onnx'
    assert (ROOT / engine).is_file() and (ROOT / (engine + '.json')).is_file()


def test_engine_argument_overrides_the_parameter_file():
    spec = load_launch_file(find_launch_file('cilrs_drive'), ['engine:=/x/w4.safetensors'])
    assert spec.node('cilrs_policy').parameters[-1]['engine'] == '/x/w4.safetensors'


def test_launch_drives_one_route_and_ends_by_itself():
    pytest.importorskip('highway_env', reason='env_bridge needs highway-env')
    pytest.importorskip('onnxruntime', reason='the default engine is onnxruntime')
    env = dict(os.environ, QAIL_ROS_TRANSPORT='none', OMP_NUM_THREADS='1')
    cmd = [sys.executable, '-m', 'qail_ros.cli', 'launch', 'cilrs_drive', '--composed',
           'episodes:=1', 'density:=empty', 'rate_hz:=200.0']
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert 'episode 1 (seed 0): success, route 100%' in out, out
    assert '1 episodes done; shutting down' in out, out
