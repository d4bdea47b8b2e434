"""Type gate: mypy over the core packages, with the configuration in setup.cfg ([mypy])."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: the packages whose types are checked (issue 14: runtime, engines, quant, recording, bag)
CHECKED = ('qail_ros/runtime', 'qail_ros/engines', 'qail_ros/quant', 'qail_ros/recording',
           'qail_ros/bag')


def test_mypy_is_clean():
    pytest.importorskip('mypy', reason='mypy not installed (it is in requirements.txt)')
    paths = [p for p in CHECKED if (ROOT / p).exists()]
    proc = subprocess.run([sys.executable, '-m', 'mypy', '--config-file', 'setup.cfg', *paths],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
