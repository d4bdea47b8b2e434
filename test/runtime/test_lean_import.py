"""`import qail_ros` and its node, CLI and bench modules load no rclpy, torch or zenoh.

Runs in a fresh interpreter (this test process may already hold torch). A stand-in `rclpy`
package is put on the path of that interpreter, so `rclpy` is importable there as on a ROS
machine and the check is not passed merely because rclpy is absent: a module that imports it at
import time (or `qail_ros.runtime` picking the rclpy runtime eagerly) would put it in
sys.modules. torch and zenoh are installed in .venv, so their checks are real as they are.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ('rclpy', 'torch', 'zenoh')

_PROBE = textwrap.dedent('''
    import importlib, json, pkgutil, sys
    forbidden = {forbidden!r}
    culprits = {{}}
    imported = []

    def check(name):
        mod = importlib.import_module(name)
        imported.append(name)
        for heavy in forbidden:
            if heavy in sys.modules and heavy not in culprits:
                culprits[heavy] = name
        return mod

    for name in ('qail_ros', 'qail_ros.messages', 'qail_ros.errors', 'qail_ros.runtime',
                 'qail_ros.runtime.api', 'qail_ros.runtime.node', 'qail_ros.runtime.params'):
        check(name)
    for pkg in ('qail_ros.nodes', 'qail_ros.cli', 'qail_ros.bench'):
        try:
            mod = check(pkg)
        except ModuleNotFoundError:
            continue
        for info in pkgutil.iter_modules(mod.__path__, pkg + '.'):
            check(info.name)
    import qail_ros.runtime as rt
    print(json.dumps({{'culprits': culprits, 'imported': imported,
                      'runtime_name': rt.runtime_name(),
                      'rclpy_file': getattr(sys.modules.get('rclpy'), '__file__', None)}}))
''')


def _run_probe(tmp_path: Path) -> dict:
    fake = tmp_path / 'fake_site' / 'rclpy'
    fake.mkdir(parents=True)
    (fake / '__init__.py').write_text('"""Stand-in: importing it marks a non-lean import."""\n')
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([str(ROOT), str(tmp_path / 'fake_site')])
    env.pop('QAIL_ROS_RUNTIME', None)
    proc = subprocess.run([sys.executable, '-c', _PROBE.format(forbidden=FORBIDDEN)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_qail_ros_and_its_modules_is_lean(tmp_path):
    result = _run_probe(tmp_path)
    assert 'qail_ros.runtime' in result['imported']
    # The stand-in is visible, so auto mode would choose rclpy: selection must stay lazy.
    assert result['runtime_name'] == 'rclpy'
    culprits = result['culprits']
    assert not culprits, (
        'heavy modules loaded at import time (heavy module -> first module whose import loaded '
        f'it): {culprits}; import them inside the function or module that needs them')
