"""`import qail_ros.driving` (and the node module) loads no simulator, pygame, carla or torch."""
import subprocess
import sys


def test_import_loads_no_simulator():
    code = ('import sys, qail_ros.driving, qail_ros.driving.carla_adapter, '
            'qail_ros.nodes.env_bridge; '
            "print(sorted(m for m in ('highway_env', 'pygame', 'gymnasium', 'carla', 'torch') "
            'if m in sys.modules))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == '[]', out.stdout
